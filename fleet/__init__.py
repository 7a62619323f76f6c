"""mantra.fleet: over-the-air updates (TUF metadata, staged rollouts) and the
fleet telemetry server. Empty until the fleet issue lands."""
