"""The fleet back end over MQTT v5: the link, commands, publishers and the events outbox."""
