"""The MQTT API: commands, publishers, security, hostile input."""
