"""Exceptions of the accuracy package: user errors carry the file, the problem and the fix."""

from __future__ import annotations


class AccuracyInputError(Exception):
    """A user input (log, dataset, tokenizer, config) cannot be scored; the message says why.

    The CLI prints it as one `error: ...` line and exits 2; it never shows a traceback.
    """


class PunktDataError(AccuracyInputError):
    """NLTK's English punkt_tab parameters are missing or cannot be written/loaded."""


class TargetsNotSetError(AccuracyInputError):
    """The benchmark config has no accuracy targets yet (all zero): scoring works, judging not."""
