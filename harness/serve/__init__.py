"""The native engine behind an OpenAI-compatible HTTP API (`python -m harness serve`)."""
