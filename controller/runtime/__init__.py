"""The process: the task group, the wiring, the event loop, systemd and logging."""
