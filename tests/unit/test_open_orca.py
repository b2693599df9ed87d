"""Preprocessing of MLCommons' OpenOrca pickle schema (a small pickle built here)."""

import json

import numpy as np
import pandas as pd
import pytest

from harness.dataset import Dataset, DatasetMissingError
from preprocess.open_orca import DatasetFormatError, preprocess

ORIGINS = ("cot", "niv", "flan", "t0")


def openorca_frame(n: int) -> pd.DataFrame:
    """The columns and dtypes of open_orca_gpt4_tokenized_llama.sampled_24576.pkl."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        origin = ORIGINS[i % 4]
        question = f"question {i}"
        system = "You are an AI assistant." if i % 2 else ""
        prompt = (
            f"<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{question} [/INST]"
            if system
            else f"<s>[INST] {question} [/INST]"
        )
        tok_input = [1, *rng.integers(3, 32000, size=5 + i % 7).tolist(), 29871]
        tok_output = rng.integers(3, 32000, size=3 + i % 5).tolist()
        rows.append(
            {
                "id": f"{origin}.{i}",
                "system_prompt": system,
                "question": question,
                "output": f"answer {i}.",
                "input": prompt,
                "tok_input": tok_input,
                "tok_output": tok_output,
                "origin": origin,
                "tok_input_length": len(tok_input),
                "tok_output_length": len(tok_output),
            }
        )
    return pd.DataFrame(rows)


def test_arrays_feed_tok_input_verbatim(tmp_path):
    df = openorca_frame(12)
    pkl = tmp_path / "open_orca.pkl"
    df.to_pickle(pkl)
    out = preprocess(pkl, tmp_path / "pre")
    ds = Dataset.load(out)
    assert len(ds) == 12
    for i in range(12):
        assert ds.prompt(i) == df.tok_input[i]  # 29871 kept, no re-tokenization
        assert ds.output_lens[i] == df.tok_output_length[i]
    assert ds.input_ids_padded.dtype == np.int32
    kept = pd.read_pickle(out / "dataset.pkl")
    assert list(kept.output) == list(df.output)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 12
    assert len(Dataset.load(out / "calibration")) == 12  # min(1000, N) rows


def test_calibration_uses_mlcommons_seed(tmp_path):
    df = openorca_frame(1500)
    pkl = tmp_path / "big.pkl"
    df.to_pickle(pkl)
    out = preprocess(pkl, tmp_path / "pre")
    calib = pd.read_pickle(out / "calibration/dataset.pkl")
    expected = df.sample(n=1000, random_state=12345)
    assert list(calib.id) == list(expected.id)


def test_official_calibration_file_is_preferred(tmp_path):
    df = openorca_frame(20)
    df.to_pickle(tmp_path / "d.pkl")
    df.iloc[:5].to_pickle(tmp_path / "c.pkl")
    out = preprocess(tmp_path / "d.pkl", tmp_path / "pre", tmp_path / "c.pkl")
    assert len(Dataset.load(out / "calibration")) == 5


def test_existing_output_is_kept_unless_forced(tmp_path):
    df = openorca_frame(4)
    df.to_pickle(tmp_path / "d.pkl")
    out = preprocess(tmp_path / "d.pkl", tmp_path / "pre")
    openorca_frame(6).to_pickle(tmp_path / "d.pkl")
    preprocess(tmp_path / "d.pkl", out)
    assert len(Dataset.load(out)) == 4
    preprocess(tmp_path / "d.pkl", out, force=True)
    assert len(Dataset.load(out)) == 6


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("not a pickle"), "not a pandas pickle"),
        (
            lambda p: openorca_frame(3).drop(columns=["output"]).to_pickle(p),
            r"missing column\(s\) \['output'\]",
        ),
        (lambda p: pd.Series([1]).to_pickle(p), "expected a DataFrame"),
        (lambda p: openorca_frame(3).iloc[:0].to_pickle(p), "empty"),
    ],
)
def test_bad_pickles_are_named(tmp_path, make, message):
    pkl = tmp_path / "bad.pkl"
    make(pkl)
    with pytest.raises(DatasetFormatError, match=message):
        preprocess(pkl, tmp_path / "pre")
    assert not (tmp_path / "pre" / "manifest.json").exists()


def test_missing_preprocessed_dir_says_what_to_run(tmp_path):
    with pytest.raises(DatasetMissingError, match="make preprocess_data"):
        Dataset.load(tmp_path)
