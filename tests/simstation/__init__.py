"""The simulator, its CLI and its reports."""
