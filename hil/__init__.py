"""mantra.hil: hardware-in-the-loop test benches (real or virtual boards,
labgrid-style resources, drivers and strategies). Empty until the HIL issue lands."""
