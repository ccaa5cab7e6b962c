"""The swap: its phases and machine, interlocks, plan, inventory, dispensing and the sequencer."""
