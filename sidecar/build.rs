//! Link arguments for the `portico-proxy` binary. An idle proxy's resident memory is mostly the
//! pages of its own binary that the kernel mapped in (`make bench` measures it; see
//! `hack/idle-rss.sh` for the breakdown), so the binary is laid out to touch fewer of them.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=startup.order");
    // The flags below are for lld, Rust's default linker on this target since 1.90; elsewhere
    // the binary links as before.
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || rustc_minor() < 90
        || own_linker()
    {
        return;
    }
    let arg = |a: &str| println!("cargo::rustc-link-arg-bin=portico-proxy={a}");
    // Relative relocations as a bitmap (DT_RELR, glibc 2.36) instead of 24 bytes each: the
    // dynamic loader reads all of them at start, 370 kB of the binary before this.
    arg("-Wl,-z,pack-relative-relocs");
    // The functions that run from exec to idle side by side at the start of .text: the kernel
    // maps a faulting page's neighbours too (whole large folios of the page cache), so startup
    // code scattered over the binary made an idle proxy map 2.7 MB of its 5 MB of code, and
    // about 1 MB once gathered. `hack/startup-order.sh` writes the list. Symbol names carry
    // hashes that change with dependency and compiler versions; names that no longer exist are
    // skipped, so an out-of-date list costs memory, never correctness.
    // Linked from a copy in OUT_DIR, not from the checkout: a cached target directory reused
    // by a checkout at another path (CI) keeps this script's output, and with it the path.
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("startup.order");
    let Some(out) = std::env::var_os("OUT_DIR") else {
        return;
    };
    let copy = Path::new(&out).join("startup.order");
    if std::fs::copy(&order, &copy).is_err() {
        return;
    }
    arg(&format!("-Wl,--symbol-ordering-file={}", copy.display()));
    arg("-Wl,--no-warn-symbol-ordering");
}

/// Whether the build names its own linker (GNU ld, for one, refuses `--symbol-ordering-file`):
/// then these flags are left out rather than guessed at.
fn own_linker() -> bool {
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || flags.split('\x1f').any(|f| {
            f.contains("linker") || f.contains("link-self-contained") || f.contains("fuse-ld")
        })
}

/// The minor version of the Rust compiler (`rustc 1.95.0 (...)` is 95); 0 if unknown.
fn rustc_minor() -> u32 {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let version = String::from_utf8(out.stdout).ok()?;
            version.split(['.', ' ']).nth(2)?.parse().ok()
        })
        .unwrap_or(0)
}
