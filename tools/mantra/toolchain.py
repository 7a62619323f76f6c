"""The Debian Rust toolchain (rustc-web, cargo-web, rust-web-src), called
explicitly: the `cargo` first on PATH may be rustup's, which has neither the
Rust source nor the bare-metal targets. MANTRA_CARGO and MANTRA_RUSTC
override the paths (e.g. for a rustup nightly with rust-src).

Bare-metal crates are built with build-std, which needs RUSTC_BOOTSTRAP=1 on
a stable compiler; the linkers (lld-link, ld.lld) are set in
mantra-os/.cargo/config.toml.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mantra import proc
from mantra.errors import MantraError

DEFAULT_CARGO = "/usr/bin/cargo"
DEFAULT_RUSTC = "/usr/bin/rustc"

BUILD_STD = (
    "-Zbuild-std=core,alloc,compiler_builtins",
    "-Zbuild-std-features=compiler-builtins-mem",
)


@dataclass(frozen=True)
class RustToolchain:
    cargo: str
    rustc: str

    @classmethod
    def locate(cls) -> RustToolchain:
        """The Debian toolchain, or the one MANTRA_CARGO / MANTRA_RUSTC name."""
        cargo = os.environ.get("MANTRA_CARGO", DEFAULT_CARGO)
        rustc = os.environ.get("MANTRA_RUSTC", DEFAULT_RUSTC)
        for tool, variable, package in ((cargo, "MANTRA_CARGO", "cargo-web"), (rustc, "MANTRA_RUSTC", "rustc-web")):
            if not os.access(tool, os.X_OK):
                raise MantraError(
                    f"{tool} not found (the Rust toolchain MantraOS builds with)",
                    f"install the Debian packages rustc-web cargo-web rust-web-src ({package} provides it; "
                    f"./mantra installs them), or set {variable} to another toolchain's binary",
                )
        return cls(cargo, rustc)


    def _bare_metal_env(self, target_dir: Path, config_dir: Path) -> dict[str, str]:
        """The environment of a bare-metal cargo build: the Debian compiler,
        build-std's unstable flags allowed, the board's target directory and
        the product's generated configuration."""
        return {
            "RUSTC": self.rustc,
            "RUSTC_BOOTSTRAP": "1",
            "CARGO_TARGET_DIR": str(target_dir),
            "MANTRA_CONFIG_DIR": str(config_dir),
        }

    def build_bare_metal(
        self,
        *,
        crate_dir: Path,
        package: str,
        binary: str,
        target: str,
        target_dir: Path,
        config_dir: Path,
        release: bool,
        features: tuple[str, ...] = (),
        what: str,
    ) -> Path:
        """`cargo build` of one binary for a bare-metal target with build-std;
        returns the path of the built artifact (without extension)."""
        cmd = [self.cargo, "build", "-p", package, "--bin", binary, "--target", target, *BUILD_STD]
        if release:
            cmd.append("--release")
        if features:
            cmd += ["--features", ",".join(features)]
        env = self._bare_metal_env(target_dir, config_dir)
        proc.run(
            cmd,
            cwd=crate_dir,
            env=env,
            what=f"cargo build of {what}",
            hint="the compiler's messages are above; `./mantra -v build` shows the exact cargo command",
        )
        return target_dir / target / ("release" if release else "debug") / binary

    def build_programs(
        self,
        *,
        crate_dir: Path,
        packages: list[str],
        binaries: list[str],
        target: str,
        target_dir: Path,
        config_dir: Path,
        release: bool,
        what: str,
    ) -> dict[str, Path]:
        """One `cargo build` of several binaries (the user programs) for a
        bare-metal target with build-std; returns binary name -> artifact."""
        cmd = [self.cargo, "build"]
        for package in packages:
            cmd += ["-p", package]
        for binary in binaries:
            cmd += ["--bin", binary]
        cmd += ["--target", target, *BUILD_STD]
        if release:
            cmd.append("--release")
        env = self._bare_metal_env(target_dir, config_dir)
        proc.run(
            cmd,
            cwd=crate_dir,
            env=env,
            what=f"cargo build of {what}",
            hint="the compiler's messages are above; `./mantra -v build` shows the exact cargo command",
        )
        out = target_dir / target / ("release" if release else "debug")
        return {binary: out / binary for binary in binaries}

    @property
    def rustdoc(self) -> str:
        """The rustdoc beside rustc (doctests must use the same compiler)."""
        return str(Path(self.rustc).with_name("rustdoc"))

    def test_host(self, crate_dir: Path) -> int:
        """`cargo test` of the workspace's host-testable crates; returns its exit status."""
        completed = proc.run(
            [self.cargo, "test"],
            cwd=crate_dir,
            env={"RUSTC": self.rustc, "RUSTDOC": self.rustdoc},
            what="cargo test",
            hint="see the failing tests above",
            check=False,
        )
        return completed.returncode
