"""The artifacts agent: fetches, validates and stores what the registry's aggregates have requested."""
