"""swapctl's sub-commands."""
