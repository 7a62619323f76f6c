//! Embeds the root public key MantraBoot verifies images with: the raw 32
//! bytes `./mantra build` writes to `$MANTRA_CONFIG_DIR/root_key.bin` from
//! the product's key set (docs/signing.md). Only the UEFI build needs it, so
//! host tests run without MANTRA_CONFIG_DIR.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=MANTRA_CONFIG_DIR");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("uefi") {
        return;
    }
    let Ok(dir) = env::var("MANTRA_CONFIG_DIR") else {
        panic!("MANTRA_CONFIG_DIR is not set: build MantraBoot through `./mantra build -b BOARD`");
    };
    let key = PathBuf::from(dir).join("root_key.bin");
    println!("cargo:rerun-if-changed={}", key.display());
    let bytes = fs::read(&key).unwrap_or_else(|e| {
        panic!("cannot read the root public key {}: {e}; build through `./mantra build`, which writes it", key.display())
    });
    assert!(bytes.len() == 32, "{} holds {} bytes, not a raw 32-byte Ed25519 public key", key.display(), bytes.len());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("root_key.bin");
    fs::write(&out, &bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
