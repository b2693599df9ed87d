"""`python -m harness accuracy`: score an accuracy log, print the results and the verdict line,
optionally write accuracy.txt. The only module of the package that prints.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import AccuracyInputError, TargetsNotSetError
from .punkt import DEFAULT_NLTK_DATA_DIR, ENV_NLTK_DATA_DIR
from .verdict import CONFIG_VER_SUFFIX

EXIT_PASSED = 0
EXIT_FAILED = 1  # scored, but below a threshold
EXIT_INPUT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness accuracy",
        description="Score mlperf_log_accuracy.json as MLCommons' evaluate-accuracy.py does.",
    )
    p.add_argument("--log", required=True, help="mlperf_log_accuracy.json")
    p.add_argument(
        "--dataset",
        required=True,
        help="OpenOrca-format pickle, or a preprocessed dir holding dataset.pkl",
    )
    p.add_argument("--tokenizer", required=True, help="checkpoint (tokenizer) directory")
    p.add_argument(
        "--benchmark",
        default="llama2-70b",
        help="benchmark name; targets from configs/benchmark/<name>.yaml",
    )
    p.add_argument(
        "--benchmark_config",
        default=None,
        help="YAML with an accuracy: section (overrides the --benchmark lookup)",
    )
    p.add_argument("--config_ver", default="default", choices=list(CONFIG_VER_SUFFIX))
    p.add_argument("--output", default=None, help="write accuracy.txt here")
    p.add_argument(
        "--append_hash",
        action="store_true",
        help="append hash=<sha256 of --log> to --output (submission packaging)",
    )
    p.add_argument(
        "--num_workers", type=int, default=None, help="scoring processes (default: usable CPUs)"
    )
    p.add_argument(
        "--nltk_data_dir",
        default=None,
        help=f"punkt_tab data dir (default ${ENV_NLTK_DATA_DIR} or {DEFAULT_NLTK_DATA_DIR})",
    )
    p.add_argument(
        "--dtype", default="int32", choices=["int32", "int64"], help="token id type in the log"
    )
    p.add_argument(
        "--rouge_impl",
        default="fast",
        choices=["fast", "rouge_score"],
        help="fast: bit-identical to rouge_score, faster; rouge_score: the stock one",
    )
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0: passed, 1: scored but failed a threshold, 2: bad input (one `error:` line)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
    if args.append_hash and not args.output:
        print("error: --append_hash needs --output", file=sys.stderr)
        return EXIT_INPUT_ERROR
    from .scorer import score_log
    from .targets import load_targets
    from .verdict import append_hash, judge, write_accuracy_txt

    try:
        try:
            targets = load_targets(args.benchmark, args.benchmark_config)
        except TargetsNotSetError as exc:
            targets, no_targets = None, str(exc)
        result = score_log(
            args.log,
            args.dataset,
            args.tokenizer,
            num_workers=args.num_workers,
            nltk_data_dir=args.nltk_data_dir,
            dtype=args.dtype,
            rouge_impl=args.rouge_impl,
        )
        verdict = judge(result, targets, args.config_ver, args.benchmark) if targets else None
        if args.output:
            write_accuracy_txt(result, args.output)
            if args.append_hash:
                append_hash(args.output, args.log)
    except AccuracyInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    print("\nResults\n")
    print(result.as_dict())
    if args.output:
        print(f"wrote {args.output}")
    if verdict is None:
        print(f"note: {no_targets}")
        return EXIT_PASSED
    print(verdict.line)
    return EXIT_PASSED if verdict.passed else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
