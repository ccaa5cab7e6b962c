"""The fleet back end over MQTT v5: the link, the command server and the publishers."""
