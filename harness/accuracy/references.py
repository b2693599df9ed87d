"""Reference answers and the detokenizer: the dataset's `output` column and the checkpoint's
tokenizer, loaded the way MLCommons' evaluate-accuracy.py loads them.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

from .errors import AccuracyInputError

logger = logging.getLogger(__name__)

PREPROCESSED_PICKLE = "dataset.pkl"


def resolve_dataset_pickle(dataset_path: str | os.PathLike[str]) -> Path:
    """The OpenOrca-format pickle itself, or `<preprocessed dir>/dataset.pkl`."""
    path = Path(dataset_path)
    if path.is_dir():
        pkl = path / PREPROCESSED_PICKLE
        if not pkl.is_file():
            raise AccuracyInputError(
                f"{path}: preprocessed dir has no {PREPROCESSED_PICKLE}; fix: rerun "
                "`make preprocess_data` or pass the OpenOrca pickle itself"
            )
        return pkl
    if not path.is_file():
        raise AccuracyInputError(f"{path}: dataset not found")
    return path


def load_references(dataset_path: str | os.PathLike[str]) -> list[str]:
    """The `output` column (ground-truth answers) as a list indexed by qsl_idx (row position)."""
    import pandas as pd

    pkl = resolve_dataset_pickle(dataset_path)
    try:
        frame = pd.read_pickle(pkl)
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
    ) as exc:
        raise AccuracyInputError(f"{pkl}: cannot read the dataset pickle ({exc})") from None
    if not isinstance(frame, pd.DataFrame):
        raise AccuracyInputError(
            f"{pkl}: expected a pandas DataFrame (OpenOrca format), got {type(frame).__name__}"
        )
    if "output" not in frame.columns:
        raise AccuracyInputError(
            f"{pkl}: dataset has no 'output' column (reference answers); columns are "
            f"{list(frame.columns)[:10]}; fix: pass the OpenOrca-format pickle"
        )
    # The reference looks rows up by label; the MLCommons pickle's index is 0..N-1, so label ==
    # position there. Another index would make the two differ: say so rather than guess.
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        raise AccuracyInputError(
            f"{pkl}: dataset index is not 0..{len(frame) - 1}, so qsl_idx is ambiguous; "
            "fix: save it with .reset_index(drop=True) as processorca.py does"
        )
    references = frame["output"].tolist()
    del frame
    for row, text in enumerate(references):
        if not isinstance(text, str):
            raise AccuracyInputError(
                f"{pkl}: 'output' of row {row} is {type(text).__name__}, not text"
            )
    return references


def load_tokenizer(tokenizer_path: str | os.PathLike[str]):  # -> PreTrainedTokenizerBase
    """AutoTokenizer with use_fast=False as the reference; the fast one if there is no slow one.

    transformers 5 hands back the tokenizers-backed class for use_fast=False when the
    checkpoint has only tokenizer.json (e.g. byte-level BPE); both cases are logged.
    """
    from transformers import AutoTokenizer

    path = Path(tokenizer_path)
    if not path.is_dir():
        raise AccuracyInputError(f"{path}: tokenizer dir not found")
    kwargs = {"model_max_length": 2048, "padding_side": "left"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=False, **kwargs)
    except Exception as slow_exc:  # any loader failure: try the fast one
        logger.info("%s: no slow tokenizer (%s); trying the fast one", path, slow_exc)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True, **kwargs)
        except Exception as exc:  # third-party loaders raise anything
            raise AccuracyInputError(
                f"{path}: cannot load the tokenizer ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
            ) from None
    if getattr(tokenizer, "is_fast", False):
        logger.warning(
            "%s: checkpoint has no slow tokenizer; detokenizing with the fast one (%s)",
            path,
            type(tokenizer).__name__,
        )
    else:
        logger.info("%s: slow tokenizer %s, as the reference", path, type(tokenizer).__name__)
    return tokenizer
