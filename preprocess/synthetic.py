"""Synthetic OpenOrca-format dataset for speed runs without the real pickle (dummy weights).

Lengths are drawn from clamped log-normals whose means match MLPerf's OpenOrca sample:
output 294 tokens (the reference tokens_per_sample, 294.45) and input 200 tokens (the
real set's mean is ~190-200; we take the upper end). The spreads (sigma 0.8 out, 0.9 in)
are at least as ragged as the real set's, so batches drain unevenly: no kinder than real.
Both lengths are capped at 1023 (MLPerf keeps tok_input_length and tok_output_length < 1024).
Prompts are random Llama-2 token ids between <s> (1) and the 29871 that real prompts end in.

Run: `python -m preprocess.synthetic [--num_samples 3000] [--out_pickle ...] [--out_dir ...]`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_PICKLE = Path("build/data/synthetic-orca/synthetic_orca.pkl")
DEFAULT_OUT = Path("build/preprocessed_data/synthetic-orca")
NUM_SAMPLES = 3000
MEAN_INPUT, SIGMA_INPUT = 200.0, 0.9
MEAN_OUTPUT, SIGMA_OUTPUT = 294.0, 0.8
MAX_LEN = 1023
VOCAB = 32000


def clamped_lognormal(
    rng: np.random.Generator, n: int, mean: float, sigma: float, lo: int, hi: int
) -> np.ndarray:
    """[n] int32 in [lo, hi] with sample mean ~= mean (mu re-fit after clamping)."""
    z = rng.standard_normal(n)
    mu = np.log(mean) - sigma**2 / 2
    for _ in range(20):  # clamping moves the mean; a few fixed-point steps put it back
        x = np.clip(np.rint(np.exp(mu + sigma * z)), lo, hi)
        mu += np.log(mean / x.mean())
    return x.astype(np.int32)


def make_dataframe(num_samples: int = NUM_SAMPLES, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    in_lens = clamped_lognormal(rng, num_samples, MEAN_INPUT, SIGMA_INPUT, 8, MAX_LEN)
    out_lens = clamped_lognormal(rng, num_samples, MEAN_OUTPUT, SIGMA_OUTPUT, 2, MAX_LEN)
    prompts = [[1, *rng.integers(3, VOCAB, n - 2).tolist(), 29871] for n in in_lens.tolist()]
    return pd.DataFrame({
        "id": [f"synthetic.{i}" for i in range(num_samples)],
        "origin": "synthetic",
        "tok_input": prompts,
        "tok_input_length": in_lens,
        "output": "",  # no reference text: dummy-weight speed runs only
        "tok_output_length": out_lens,
    })  # fmt: skip


def build(
    out_pickle: Path = DEFAULT_PICKLE, out_dir: Path = DEFAULT_OUT,
    num_samples: int = NUM_SAMPLES, force: bool = False,
) -> Path:  # fmt: skip
    """Write the pickle, then preprocess it into out_dir (same layout as OpenOrca)."""
    from preprocess.open_orca import preprocess

    if force or not out_pickle.is_file():
        df = make_dataframe(num_samples)
        out_pickle.parent.mkdir(parents=True, exist_ok=True)
        df.to_pickle(out_pickle)
        logger.info(
            "synthetic set: %d samples, input mean %.1f, output mean %.1f -> %s",
            len(df), df.tok_input_length.mean(), df.tok_output_length.mean(), out_pickle,
        )  # fmt: skip
    return preprocess(out_pickle, out_dir, None, force=force)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_samples", type=int, default=NUM_SAMPLES)
    p.add_argument("--out_pickle", type=Path, default=DEFAULT_PICKLE)
    p.add_argument("--out_dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    build(a.out_pickle, a.out_dir, a.num_samples, a.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
