"""The safety supervisor, the actuators (the only path to machinery) and the motion log."""
