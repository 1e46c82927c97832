"""Timing, correctness checks and sweeps."""
