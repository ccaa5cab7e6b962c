"""Durable state: the SQLite journal, the event log and the swap records."""
