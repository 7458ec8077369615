"""Benchmarks against real parts on this machine. `python -m bench <name>|all`."""
