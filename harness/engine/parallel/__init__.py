"""Tensor parallelism for the native engine: weight sharding (tp.py) and rank processes
(launcher.py). Imports nothing outside harness.engine."""
