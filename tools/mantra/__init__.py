"""MantraOS tooling: the `mantra` command and the build driver.

Kconfig -> cargo -> disk image (`mantra.build`), board runners
(`mantra.runners`, `mantra.qemu`), and the tooling packages of the design card
(`mantra.signing`, `mantra.provision`, `mantra.fleet`, `mantra.hil`), which
live in the repository's top-level folders.
"""
