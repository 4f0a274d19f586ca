"""Adapters to the outside world: Kafka, S3, the local stack, telemetry, settings."""
