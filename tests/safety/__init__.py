"""The safety supervisor and the actuators."""
