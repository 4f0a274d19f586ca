"""HTTP only: check shape and rights, publish a command, answer from the read model."""
