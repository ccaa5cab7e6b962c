"""Durable state: the SQLite journal, the event log with its outbox, and swap records."""
