"""Consumers of snapshots: put backed-up data back where it serves (databases, …)."""
