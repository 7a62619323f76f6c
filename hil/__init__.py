"""mantra.hil: the hardware-in-the-loop bench (docs/hil.md).

The same tests on QEMU boards and real boards, locally or on a bench host
over SSH, in labgrid's layers:

- resources (resources.py, power.py, qemu_board.py): what a place has;
- drivers (console.py, power.py, drivers.py): console, power, boot, flasher, attestation;
- strategy (strategy.py): off -> flash-mode -> flashed -> booted -> healthy;
- target.py: one place's resources, drivers, strategy and lock (lock.py);
- bench.py: bench files; run.py, scenarios.py, results.py: `mantra hil test`;
- remote.py: `mantra hil serve` and the SSH client; pytest_plugin.py: `pytest --hil-place`.
"""
