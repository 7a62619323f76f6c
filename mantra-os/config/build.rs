//! Pulls in the constants `./mantra build` generated from the resolved
//! Kconfig (build/<board>/<product>/config/mantra_config.rs), and turns its
//! `cfg` list into rustc cfg flags. Nothing here has defaults of its own:
//! the configuration has one source, the Kconfig tree.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=MANTRA_CONFIG_DIR");
    let Ok(dir) = env::var("MANTRA_CONFIG_DIR") else {
        panic!(
            "MANTRA_CONFIG_DIR is not set: the native crates are configured by Kconfig. \
             Build through `./mantra build -b BOARD` (or run `./mantra config -b BOARD` and \
             export MANTRA_CONFIG_DIR=build/BOARD/PRODUCT/config)."
        );
    };
    let dir = PathBuf::from(dir);
    let rs = dir.join("mantra_config.rs");
    let cfgs = dir.join("cfg.txt");
    println!("cargo:rerun-if-changed={}", rs.display());
    println!("cargo:rerun-if-changed={}", cfgs.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("mantra_config.rs");
    fs::copy(&rs, &out).unwrap_or_else(|e| panic!("cannot read {}: {e}; run ./mantra config again", rs.display()));
    let cfg_text = fs::read_to_string(&cfgs).unwrap_or_default();
    for name in cfg_text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        println!("cargo:rustc-check-cfg=cfg({name})");
        println!("cargo:rustc-cfg={name}");
    }
}
