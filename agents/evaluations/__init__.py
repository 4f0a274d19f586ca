"""Evaluations: an adapter scored against a baseline on a dataset (streams.evaluations), decided and run here."""
