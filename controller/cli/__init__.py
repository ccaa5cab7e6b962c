"""`swapctl`: one module per sub-command, on top of everything else."""
