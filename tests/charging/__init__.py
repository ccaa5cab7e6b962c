"""The charging room: supervision, slot control, setpoints, power and the forecast."""
