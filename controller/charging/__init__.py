"""The chargers: slot views, supervision, alarms, slot control and the station's power."""
