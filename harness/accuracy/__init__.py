"""Accuracy scoring: mlperf_log_accuracy.json -> tokens -> text -> ROUGE + tokens/sample ->
verdict and accuracy.txt. Never imports an engine, a backend or LoadGen.
"""

from .errors import AccuracyInputError, PunktDataError
from .punkt import ensure_punkt
from .scorer import AccuracyResult, score_log, score_texts
from .targets import Targets, load_targets
from .verdict import Verdict, accuracy_txt, append_hash, judge

__all__ = [
    "AccuracyInputError",
    "AccuracyResult",
    "PunktDataError",
    "Targets",
    "Verdict",
    "accuracy_txt",
    "append_hash",
    "ensure_punkt",
    "judge",
    "load_targets",
    "score_log",
    "score_texts",
]
