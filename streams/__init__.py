"""The wire contract every part of loraplane shares: envelopes, message types and topics.

Nothing here imports another loraplane package.
"""
