"""The journal and the swap records."""
