"""Seed 004: the admin LoRA file API (upload, list, delete to the bin, restore)."""
