//! Links the binary with packed relative relocations (`-z pack-relative-relocs`, ELF's
//! DT_RELR) where the toolchain and the C library support them. The binary is
//! position-independent, so every pointer in its tables of vtables, strings and
//! statics needs a relocation at start: about 0.9 MB of 24-byte `.rela.dyn` entries in
//! a release build, which DT_RELR packs into about 10 KB. Nothing changes at run time
//! but the size (the loader applies the same relocations).
//!
//! A DT_RELR binary needs glibc 2.36 or later, where the loader that runs it names the
//! missing `GLIBC_ABI_DT_RELR` version instead of starting. So the flag is used only
//! when the target's libc.so.6 (as the linker finds it) defines that version and a
//! test program links with the flag without a warning; otherwise the link is the
//! usual one, on older systems and on other targets alike.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os != "linux" || target_env != "gnu" {
        return;
    }
    let linker = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_string());
    if libc_has_relr(&linker) && links_with_relr(&linker) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the libc.so.6 the linker would use defines `GLIBC_ABI_DT_RELR`.
fn libc_has_relr(linker: &str) -> bool {
    let Ok(out) = Command::new(linker)
        .arg("-print-file-name=libc.so.6")
        .output()
    else {
        return false;
    };
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_absolute() {
        return false;
    }
    std::fs::read(&path)
        .map(|bytes| bytes.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR"))
        .unwrap_or(false)
}

/// Whether a test program links with the flag and the linker says nothing about it
/// (GNU ld ignores a `-z` keyword it does not know, with a warning).
fn links_with_relr(linker: &str) -> bool {
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        return false;
    };
    let dir = PathBuf::from(out_dir);
    let source = dir.join("relr-probe.c");
    if std::fs::write(&source, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let Ok(out) = Command::new(linker)
        .arg("-Wl,-z,pack-relative-relocs")
        .arg(&source)
        .arg("-o")
        .arg(dir.join("relr-probe"))
        .output()
    else {
        return false;
    };
    out.status.success() && out.stderr.is_empty()
}
