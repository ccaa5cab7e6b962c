"""The config loader, against hostile and broken files."""
