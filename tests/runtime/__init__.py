"""The daemon's lifecycle, logging, sd_notify and the systemd unit."""
