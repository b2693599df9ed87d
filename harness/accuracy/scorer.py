"""Scores a LoadGen accuracy log as MLCommons' llama2-70b evaluate-accuracy.py does: tokens ->
text -> strip + sentence split -> ROUGE F-measures (mean x 100) and tokens per sample.

The main process streams the log and detokenizes in chunks; worker processes (spawned, each
with its own scorer) postprocess and score them. Nothing here knows about engines or LoadGen.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import AccuracyInputError
from .log_reader import LogSample, iter_log_samples
from .punkt import ensure_punkt
from .references import load_references, load_tokenizer
from .rouge import ROUGE_TYPES, make_scorer

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 256
RESULT_KEYS = (*ROUGE_TYPES, "gen_len", "gen_num", "gen_tok_len", "tokens_per_sample")


@dataclass(frozen=True)
class AccuracyResult:
    """What evaluate-accuracy.py prints; ROUGE values are mean F-measure x 100, 4 decimals."""

    rouge1: float
    rouge2: float
    rougeL: float
    rougeLsum: float
    gen_len: int  # characters of all postprocessed predictions
    gen_num: int  # unique samples scored
    gen_tok_len: int  # every logged token of the kept entries, EOS included
    tokens_per_sample: float  # round(gen_tok_len / gen_num, 1)

    def as_dict(self) -> dict[str, float | int]:
        """Plain Python floats/ints in the reference's key order (never NumPy scalars)."""
        return {
            key: (int(v) if key in ("gen_len", "gen_num", "gen_tok_len") else float(v))
            for key, v in ((k, getattr(self, k)) for k in RESULT_KEYS)
        }


@dataclass
class SampleScores:
    """Per-sample values, in log order (first entry per qsl_idx)."""

    fmeasures: dict[str, list[float]] = field(
        default_factory=lambda: {t: [] for t in ROUGE_TYPES}
    )  # rouge type -> [num_samples]
    gen_lens: list[int] = field(default_factory=list)  # [num_samples] chars of postprocessed pred

    def extend(self, chunk: tuple[list[tuple[float, float, float, float]], list[int]]) -> None:
        rows, lens = chunk
        for k, rouge_type in enumerate(ROUGE_TYPES):
            self.fmeasures[rouge_type].extend(row[k] for row in rows)
        self.gen_lens.extend(lens)

    def __len__(self) -> int:
        return len(self.gen_lens)


def postprocess_text(text: str) -> str:
    """The reference's postprocess_text for one string: strip, NLTK sentence split, join by \\n."""
    import nltk

    return "\n".join(nltk.sent_tokenize(text.strip()))


def score_pairs(
    scorer, predictions: Sequence[str], references: Sequence[str]
) -> tuple[list[tuple[float, float, float, float]], list[int]]:
    """(per-sample (rouge1, rouge2, rougeL, rougeLsum) F-measures, postprocessed pred lengths)."""
    rows = []
    lens = []
    for prediction, reference in zip(predictions, references, strict=True):
        pred = postprocess_text(prediction)
        ref = postprocess_text(reference)
        rows.append(scorer.fmeasures(ref, pred))  # rouge_score order: (target, prediction)
        lens.append(len(pred))
    return rows, lens


# Per worker process: its own scorer, built once by the pool initializer. Module state is
# the only way a ProcessPoolExecutor worker keeps an object between tasks.
_worker_scorer = None


def _init_worker(nltk_data_dir: str, rouge_impl: str) -> None:
    global _worker_scorer
    ensure_punkt(nltk_data_dir)
    _worker_scorer = make_scorer(rouge_impl)


def _score_chunk(
    predictions: list[str], references: list[str]
) -> tuple[list[tuple[float, float, float, float]], list[int]]:
    assert _worker_scorer is not None, "worker initializer did not run"
    return score_pairs(_worker_scorer, predictions, references)


def _default_num_workers() -> int:
    return max(
        1,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )


def _warm_up() -> None:
    """No-op task: makes the pool spawn (and initialize) its workers right away."""


class _ChunkScorer:
    """Scores (predictions, references) chunks in order, in this process for one worker, else in
    a spawned process pool (safe inside a process with threads or torch) that starts on entry,
    so workers import while the caller loads the dataset and tokenizer. At most 2 chunks per
    worker are in flight, so memory does not grow with the log."""

    def __init__(self, num_workers: int, nltk_data_dir: Path, rouge_impl: str) -> None:
        self._num_workers = num_workers
        self._nltk_data_dir = nltk_data_dir
        self._rouge_impl = rouge_impl
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _ChunkScorer:
        make_scorer(self._rouge_impl)  # validates rouge_impl before any process starts
        if self._num_workers > 1:
            self._pool = ProcessPoolExecutor(
                max_workers=self._num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(str(self._nltk_data_dir), self._rouge_impl),
            )
            for _ in range(self._num_workers):
                self._pool.submit(_warm_up)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def score(self, chunks: Iterable[tuple[list[str], list[str]]]) -> SampleScores:
        scores = SampleScores()
        if self._pool is None:
            scorer = make_scorer(self._rouge_impl)
            for predictions, references in chunks:
                scores.extend(score_pairs(scorer, predictions, references))
            return scores
        in_flight: deque[Future] = deque()
        for predictions, references in chunks:
            if len(in_flight) >= 2 * self._num_workers:
                scores.extend(in_flight.popleft().result())
            in_flight.append(self._pool.submit(_score_chunk, predictions, references))
        while in_flight:
            scores.extend(in_flight.popleft().result())
        return scores


def aggregate(scores: SampleScores, gen_tok_len: int) -> AccuracyResult:
    """The reference's reduction: round(np.mean(f) * 100, 4) per type (NumPy rounding, as
    there), gen_len = sum of chars, tokens_per_sample = round(gen_tok_len / gen_num, 1)."""
    gen_num = len(scores)
    if gen_num == 0:
        raise AccuracyInputError("no samples to score")
    rouge = {t: float(round(np.mean(v) * 100, 4)) for t, v in scores.fmeasures.items()}
    return AccuracyResult(
        **rouge,
        gen_len=int(np.sum(scores.gen_lens)),
        gen_num=gen_num,
        gen_tok_len=int(gen_tok_len),
        tokens_per_sample=round(gen_tok_len / gen_num, 1),
    )


def score_texts(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    num_workers: int | None = None,
    nltk_data_dir: str | os.PathLike[str] | None = None,
    rouge_impl: str = "fast",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> SampleScores:
    """Per-sample ROUGE of already-detokenized predictions against reference answers."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    data_dir = ensure_punkt(nltk_data_dir)
    chunks = (
        (list(predictions[i : i + chunk_size]), list(references[i : i + chunk_size]))
        for i in range(0, len(predictions), chunk_size)
    )
    workers = num_workers if num_workers is not None else _default_num_workers()
    with _ChunkScorer(workers, data_dir, rouge_impl) as chunk_scorer:
        return chunk_scorer.score(chunks)


def _batched(samples: Iterator[LogSample], size: int) -> Iterator[list[LogSample]]:
    batch: list[LogSample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Detokenizer:
    """Streams log chunks -> (predictions, references); counts tokens on the way."""

    def __init__(self, tokenizer, references: list[str], log_path: Path) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = len(tokenizer)
        self._references = references
        self._log_path = log_path
        self.gen_tok_len = 0

    def __call__(self, batches: Iterable[list[LogSample]]) -> Iterator[tuple[list[str], list[str]]]:
        for batch in batches:
            ids = []
            for sample in batch:
                self.gen_tok_len += len(sample.token_ids)
                if len(sample.token_ids) and (
                    sample.token_ids.min() < 0 or sample.token_ids.max() >= self._vocab_size
                ):
                    raise AccuracyInputError(
                        f"{self._log_path}: qsl_idx {sample.qsl_idx} has token ids outside the "
                        f"tokenizer's vocabulary [0, {self._vocab_size}); fix: pass the "
                        "checkpoint's tokenizer (and the right --dtype)"
                    )
                ids.append(sample.token_ids.tolist())
            predictions = self._tokenizer.batch_decode(ids, skip_special_tokens=True)
            yield predictions, [self._references[s.qsl_idx] for s in batch]


def score_log(
    log_path: str | os.PathLike[str],
    dataset_path: str | os.PathLike[str],
    tokenizer_path: str | os.PathLike[str],
    *,
    num_workers: int | None = None,
    nltk_data_dir: str | os.PathLike[str] | None = None,
    dtype: str = "int32",
    rouge_impl: str = "fast",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> AccuracyResult:
    """Scores mlperf_log_accuracy.json against the dataset's `output` column.

    num_workers: scoring processes (default: usable CPUs; 1 scores in this process).
    nltk_data_dir: where the punkt_tab data lives/is written (default build/nltk_data).
    dtype: token id type LoadGen logged (int32, as the reference README runs it).
    Raises AccuracyInputError for any bad input, before or while scoring.
    """
    start = time.perf_counter()
    data_dir = ensure_punkt(nltk_data_dir)  # preflight: fail before any heavy work
    log_path = Path(log_path)
    if not log_path.is_file():
        raise AccuracyInputError(f"{log_path}: accuracy log not found")
    references = load_references(dataset_path)
    workers = num_workers if num_workers is not None else _default_num_workers()
    with _ChunkScorer(workers, data_dir, rouge_impl) as chunk_scorer:
        tokenizer = load_tokenizer(tokenizer_path)
        detokenize = _Detokenizer(tokenizer, references, log_path)
        samples = iter_log_samples(log_path, len(references), dtype)
        scores = chunk_scorer.score(detokenize(_batched(samples, chunk_size)))
    result = aggregate(scores, detokenize.gen_tok_len)
    logger.info(
        "scored %d samples of %s in %.1f s with %d worker(s)",
        result.gen_num,
        log_path,
        time.perf_counter() - start,
        workers,
    )
    return result
