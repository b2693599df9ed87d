"""OpenOrca-format pickle -> the arrays the harness reads (build/preprocessed_data/<name>/).

`tok_input` is fed verbatim (never re-tokenized: the prompt already holds a literal <s> and
the trailing 29871); `output` is kept for scoring; a 1000-row calibration subset is drawn
with MLCommons' seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("tok_input", "output")
CALIBRATION_ROWS = 1000
CALIBRATION_SEED = 12345  # processorca.py's random_state for the calibration set
KEPT_COLUMNS = ("id", "origin", "output", "tok_output_length")


class DatasetFormatError(ValueError):
    pass


def read_pickle(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetFormatError(
            f"{path}: no such file; for llama2-70b get open_orca_gpt4_tokenized_llama."
            "sampled_24576.pkl from MLCommons and pass --dataset_path=<file>"
        )
    try:
        df = pd.read_pickle(path)
    except Exception as e:  # pickle raises many unrelated types for a bad file
        raise DatasetFormatError(f"{path}: not a pandas pickle ({type(e).__name__}: {e})") from e
    if not isinstance(df, pd.DataFrame):
        raise DatasetFormatError(f"{path}: holds a {type(df).__name__}, expected a DataFrame")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetFormatError(
            f"{path}: missing column(s) {missing}; found {list(df.columns)}; an OpenOrca-format "
            "pickle needs tok_input (prompt token ids) and output (reference text)"
        )
    if len(df) == 0:
        raise DatasetFormatError(f"{path}: the dataset is empty")
    return df.reset_index(drop=True)


def _output_lengths(df: pd.DataFrame) -> np.ndarray:
    if "tok_output_length" in df.columns:
        return df["tok_output_length"].to_numpy(dtype=np.int32)
    if "tok_output" in df.columns:
        return np.array([len(t) for t in df["tok_output"]], dtype=np.int32)
    return np.zeros(len(df), dtype=np.int32)


def write_arrays(df: pd.DataFrame, out_dir: Path) -> None:
    """input_ids_padded [N, max_len] int32 (0-padded), input_lens [N], output_lens [N]."""
    lens = np.array([len(t) for t in df["tok_input"]], dtype=np.int32)
    if (lens == 0).any():
        bad = int(np.argmax(lens == 0))
        raise DatasetFormatError(f"row {bad}: empty tok_input")
    padded = np.zeros((len(df), int(lens.max())), dtype=np.int32)
    for i, tokens in enumerate(df["tok_input"]):
        padded[i, : len(tokens)] = np.asarray(tokens, dtype=np.int32)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "input_ids_padded.npy", padded)
    np.save(out_dir / "input_lens.npy", lens)
    np.save(out_dir / "output_lens.npy", _output_lengths(df))
    kept = df[[c for c in KEPT_COLUMNS if c in df.columns]].copy()
    if "tok_output_length" not in kept.columns:
        kept["tok_output_length"] = _output_lengths(df)
    kept.to_pickle(out_dir / "dataset.pkl")


def preprocess(
    pickle_path: Path, out_dir: Path, calibration_path: Path | None = None, *, force: bool = False
) -> Path:
    """Writes out_dir/ and out_dir/calibration/; refuses to overwrite unless force."""
    marker = out_dir / "manifest.json"
    if marker.is_file() and not force:
        logger.info("%s exists; keeping it (pass --force to rebuild)", out_dir)
        return out_dir
    df = read_pickle(pickle_path)
    write_arrays(df, out_dir)
    if calibration_path is not None and calibration_path.is_file():
        calib = read_pickle(calibration_path)
        source = str(calibration_path)
    else:
        n = min(CALIBRATION_ROWS, len(df))
        calib = df.sample(n=n, random_state=CALIBRATION_SEED)
        source = f"{pickle_path} sampled {n} rows, random_state={CALIBRATION_SEED}"
    write_arrays(calib.reset_index(drop=True), out_dir / "calibration")
    manifest = {
        "source": str(pickle_path),
        "num_samples": len(df),
        "calibration_source": source,
        "num_calibration_samples": len(calib),
        "max_input_len": int(max(len(t) for t in df["tok_input"])),
    }
    marker.write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("preprocessed %d samples into %s", len(df), out_dir)
    return out_dir
