"""The chargers: supervision, slot control, setpoints, operator commands, power, forecast."""
