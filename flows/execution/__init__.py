"""Where and how a stage runs: devices and processes, the launched workers, deadlines, a run's context and tracking.
May import components and the tools; no other room of flows, no entry point."""
