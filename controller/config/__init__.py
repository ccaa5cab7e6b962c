"""The station's configuration: its typed model and the bounded, strict loader."""
