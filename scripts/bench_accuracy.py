"""Benchmark of harness.accuracy on a synthetic real-size accuracy log (24576 samples, about
300 tokens each): `generate` writes dataset/tokenizer/log, `score` times score_log.

    python scripts/bench_accuracy.py all --out build/bench_accuracy   # generate, then score
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable without installing the package
    sys.path.insert(0, str(REPO_ROOT))

logger = logging.getLogger("bench_accuracy")

ABBREVIATIONS = ["Dr.", "Mr.", "e.g.", "i.e.", "U.S.", "etc.", "vs.", "No."]
FUNCTION_WORDS = (
    "the of and to a in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "will what so can more no out up into than them only other its time some could these two"
).split()


class _Words:
    """English word types (punkt's training vocabulary) drawn Zipf-like, function words first,
    so that sentences share common words as real answers do (the LCS-heavy case)."""

    def __init__(self) -> None:
        from punkt.data import english  # real English word types, offline

        rest = sorted(w for w in english.ORTHO_CONTEXT if re.fullmatch(r"[a-z]{1,12}", w))
        self.words = FUNCTION_WORDS + [w for w in rest if w not in set(FUNCTION_WORDS)]
        weights = [1.0 / (rank + 2) for rank in range(len(self.words))]
        self.cum = list(itertools.accumulate(weights))

    def draw(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.words, cum_weights=self.cum, k=k)


def _sentence(rng: random.Random, words: _Words) -> list[str]:
    sent = words.draw(rng, rng.randint(5, 24))
    if rng.random() < 0.15:
        sent.insert(rng.randrange(len(sent)), rng.choice(ABBREVIATIONS))
    if rng.random() < 0.15:
        sent.insert(rng.randrange(len(sent)), str(rng.randint(1, 2024)))
    if rng.random() < 0.2:
        sent[rng.randrange(len(sent))] += ","
    sent[0] = sent[0].capitalize()
    sent[-1] += rng.choice([".", ".", ".", "?", "!", ":\n"])
    return sent


def _paragraph(rng: random.Random, words: _Words, num_words: int) -> list[list[str]]:
    sents = []
    while sum(map(len, sents)) < num_words:
        sents.append(_sentence(rng, words))
    return sents


def _perturb(rng: random.Random, words: _Words, sents: list[list[str]]) -> str:
    out = []
    for sent in sents:
        if rng.random() < 0.1:
            continue
        new = words.draw(rng, len(sent))
        kept = (w if rng.random() < 0.65 else n for w, n in zip(sent, new, strict=True))
        out.append(" ".join(kept))
    if rng.random() < 0.5:
        out.append(" ".join(_sentence(rng, words)))
    return " ".join(out)


def generate(out: Path, num_samples: int, seed: int, duplicate_fraction: float) -> None:
    import pandas as pd
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    words = _Words()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    refs, preds = [], []
    for _ in range(num_samples):
        sents = _paragraph(rng, words, rng.randint(160, 355))
        refs.append(" ".join(" ".join(s) for s in sents))
        preds.append(_perturb(rng, words, sents))
    pd.DataFrame({"output": refs, "origin": "synthetic"}).to_pickle(out / "dataset.pkl")
    logger.info("texts + dataset.pkl: %.1f s", time.perf_counter() - t0)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=16000,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(refs[:4000], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(out / "tokenizer")
    eos = fast.eos_token_id
    logger.info("tokenizer: %.1f s", time.perf_counter() - t0)

    order = list(range(num_samples))
    rng.shuffle(order)
    order += rng.sample(order, int(duplicate_fraction * num_samples))  # LoadGen repeats
    num_tokens = 0
    with open(out / "mlperf_log_accuracy.json", "w", encoding="utf-8") as f:
        f.write("[\n")
        for seq_id, qsl_idx in enumerate(order):
            ids = np.asarray(tok.encode(preds[qsl_idx]).ids + [eos], dtype="<i4")
            num_tokens += len(ids)
            entry = {"seq_id": seq_id, "qsl_idx": qsl_idx, "data": ids.tobytes().hex().upper()}
            f.write(("" if seq_id == 0 else ",\n") + json.dumps(entry))
        f.write("\n]\n")
    logger.info(
        "log: %d entries, %.1f tokens/entry, %.1f MB; %.1f s total",
        len(order),
        num_tokens / len(order),
        (out / "mlperf_log_accuracy.json").stat().st_size / 1e6,
        time.perf_counter() - t0,
    )


class _MemorySampler(threading.Thread):
    """Samples /proc every 0.1 s: peak total RSS of this process plus its children (workers).

    ru_maxrss is no use for spawned workers: it counts the parent image they were forked from.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_total_mib = 0.0
        self.peak_worker_mib = 0.0
        self._halt = threading.Event()

    @staticmethod
    def _rss_mib(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    @staticmethod
    def _children(pid: int) -> list[int]:
        kids: list[int] = []
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                kids += [int(k) for k in task.read_text().split()]
            except OSError:
                pass
        return kids

    def run(self) -> None:
        me = os.getpid()
        while not self._halt.wait(0.1):
            workers = [self._rss_mib(k) for k in self._children(me)]
            self.peak_worker_mib = max([self.peak_worker_mib, *workers])
            self.peak_total_mib = max(self.peak_total_mib, self._rss_mib(me) + sum(workers))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def score(out: Path, num_workers: int | None, rouge_impl: str) -> None:
    from harness.accuracy import judge, load_targets, score_log

    sampler = _MemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    result = score_log(
        out / "mlperf_log_accuracy.json",
        out / "dataset.pkl",
        out / "tokenizer",
        num_workers=num_workers,
        nltk_data_dir=out / "nltk_data",
        rouge_impl=rouge_impl,
    )
    wall = time.perf_counter() - t0
    sampler.stop()
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    main_rss = own.ru_maxrss / 1024
    main_cpu, worker_cpu = own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime
    print(result.as_dict())
    print(judge(result, load_targets("llama2-70b"), "high_accuracy", "llama2-70b").line)
    print(
        f"score_log wall {wall:.1f} s | peak RSS: main {main_rss:.0f} MiB, largest worker "
        f"{sampler.peak_worker_mib:.0f} MiB, main + workers {sampler.peak_total_mib:.0f} MiB"
    )
    # Wall time depends on what else runs on the machine; CPU seconds much less so.
    print(
        f"CPU seconds: main {main_cpu:.1f}, workers {worker_cpu:.1f} (load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("step", choices=["generate", "score", "all"])
    p.add_argument("--out", type=Path, default=Path("build/bench_accuracy"))
    p.add_argument("--num_samples", type=int, default=24576)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duplicate_fraction", type=float, default=0.01)
    p.add_argument("--num_workers", type=int, default=None)
    p.add_argument("--rouge_impl", default="fast", choices=["fast", "rouge_score"])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.step in ("generate", "all"):
        generate(args.out, args.num_samples, args.seed, args.duplicate_fraction)
    if args.step == "score":
        score(args.out, args.num_workers, args.rouge_impl)
    if args.step == "all":  # score in a fresh process so its peak RSS is its own
        cmd = [sys.executable, __file__, "score", "--out", str(args.out)]
        cmd += ["--rouge_impl", args.rouge_impl]
        if args.num_workers is not None:
            cmd += ["--num_workers", str(args.num_workers)]
        return subprocess.call(cmd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
