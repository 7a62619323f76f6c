//! Bare-metal builds: links the kernel with its layout script and turns the
//! resolved Kconfig's enabled bools (`$MANTRA_CONFIG_DIR/cfg.txt`, written by
//! `./mantra build`) into `cfg(mantra_*)` flags for this crate.
use std::{env, fs};

fn main() {
    println!("cargo:rustc-check-cfg=cfg(mantra_qemu_debug_exit)");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "none" {
        return;
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap();
    let script = format!("{dir}/{arch}.ld");
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rustc-link-arg-bins=-T{script}");
    println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");

    println!("cargo:rerun-if-env-changed=MANTRA_CONFIG_DIR");
    if let Ok(config_dir) = env::var("MANTRA_CONFIG_DIR") {
        let cfg_list = format!("{config_dir}/cfg.txt");
        println!("cargo:rerun-if-changed={cfg_list}");
        for name in fs::read_to_string(&cfg_list).unwrap_or_default().lines().map(str::trim).filter(|l| !l.is_empty()) {
            println!("cargo:rustc-check-cfg=cfg({name})");
            println!("cargo:rustc-cfg={name}");
        }
    }
}
