"""Native PyTorch inference engine: paged KV cache, token-budget scheduler, Llama model.

Imports nothing heavy here so that the plain-Python parts (scheduler, block manager) load
without torch. The engine never imports loadgen, backends, accuracy or submission.
"""
