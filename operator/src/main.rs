//! `portico-operator`: Portico's control plane.

fn main() {}
