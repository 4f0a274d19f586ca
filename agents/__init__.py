"""Decisions and state: Faust agents that turn commands into events."""
