"""Evaluation routes (seed 004): an adapter scored against a baseline on a dataset."""
