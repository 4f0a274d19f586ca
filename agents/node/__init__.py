"""The node agent's pure parts: device detection, the vLLM command line, adapter preflight checks."""
