"""Named exceptions of the submission package; each carries the offending value and the fix."""

from __future__ import annotations


class SubmissionError(Exception):
    """A user-fixable problem: names the file or key, what is wrong and how to fix it."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where = where
        self.problem = problem
        self.fix = fix
        super().__init__(f"{where}: {problem}; fix: {fix}")


class StageError(SubmissionError):
    """Staging cannot proceed (no valid log, missing system fields, would overwrite)."""


class AuditError(SubmissionError):
    """A TEST06 run directory or its accuracy log cannot be read."""
