"""The station as the controller sees it: slot readings with their freshness, and alarms."""
