//! `portico-proxy`: Portico's data plane.

fn main() {}
