"""Entry functions for the submission commands; the project CLI wires them to make targets.

Each returns an exit code: 0 ok, 1 checks failed, 2 user error (one `error:` line).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.submission.errors import SubmissionError
from harness.submission.rounds import ROUNDS, get_round
from harness.submission.stage import StageOptions, stage
from harness.submission.test06 import DTYPES, verify_test06
from harness.submission.validate import ERROR, NOT_REPRODUCED, TEST_RUN, check_submission

logger = logging.getLogger(__name__)

SCENARIOS = ("Offline", "Server", "SingleStream", "Interactive")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _user_error(exc: SubmissionError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def stage_main(argv: Sequence[str] | None = None) -> int:
    """make stage_results: build/logs -> results/<division>/<submitter>/..."""
    p = argparse.ArgumentParser(prog="stage_results", description=stage_main.__doc__)
    p.add_argument("--log_dir", type=Path, default=Path("build/logs"))
    p.add_argument("--output", type=Path, default=Path("results"))
    p.add_argument("--submitter", default="", help="default: `submitter:` of the system YAML")
    p.add_argument("--division", default="auto", choices=("auto", "closed", "open"))
    p.add_argument("--version", default="v6.1", choices=sorted(ROUNDS))
    p.add_argument("--force", action="store_true", help="replace staged results (old kept)")
    p.add_argument("--full_results", type=Path, default=Path("build/full_results"))
    p.add_argument("--systems_dir", type=Path, default=Path("systems"))
    p.add_argument("--repo_root", type=Path, default=Path("."), help="copied into src/")
    args = p.parse_args(argv)
    _setup_logging()
    try:
        opts = StageOptions(
            log_dir=args.log_dir,
            output=args.output,
            round=get_round(args.version),
            submitter=args.submitter,
            division=args.division,
            force=args.force,
            full_results=args.full_results,
            systems_dir=args.systems_dir,
            repo_root=args.repo_root,
            command=shlex.join(sys.argv),
        )
        report = stage(opts)
    except SubmissionError as exc:
        return _user_error(exc)
    for path in report.staged:
        print(f"staged {path}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    for failure in report.test06_failures:
        print(f"TEST06 FAILED: {failure}")
    print(
        f"staged {len(report.staged)} result(s) into {args.output}; full accuracy logs in "
        f"{args.full_results}"
    )
    return 1 if report.test06_failures else 0


def audit_verify_main(argv: Sequence[str] | None = None) -> int:
    """TEST06 verification of one run dir into <output_dir>/TEST06/ (like run_verification.py)."""
    p = argparse.ArgumentParser(prog="audit_verify", description=audit_verify_main.__doc__)
    p.add_argument("--run_dir", type=Path, required=True, help="the TEST06 LoadGen log dir")
    p.add_argument("--output_dir", type=Path, required=True, help="results/.../<scenario>")
    p.add_argument("--scenario", required=True, choices=SCENARIOS)
    p.add_argument("--eos_token_id", type=int, default=2)
    p.add_argument("--dtype", default="int32", choices=sorted(DTYPES))
    args = p.parse_args(argv)
    _setup_logging()
    try:
        result = verify_test06(
            args.run_dir, args.output_dir, args.scenario, args.eos_token_id, args.dtype
        )
    except SubmissionError as exc:
        return _user_error(exc)
    print("\n".join(result.lines()))
    for failure in result.failures[:20]:
        print(f"  {failure}")
    print(f"wrote {args.output_dir / 'TEST06' / 'verify_accuracy.txt'}")
    return 0 if result.passed else 1


def check_main(argv: Sequence[str] | None = None) -> int:
    """make check_submission: our validator of the checker's rules over results/."""
    p = argparse.ArgumentParser(prog="check_submission", description=check_main.__doc__)
    p.add_argument("--input", type=Path, default=Path("results"))
    p.add_argument("--version", default="v6.1", choices=sorted(ROUNDS))
    args = p.parse_args(argv)
    _setup_logging()
    try:
        findings = check_submission(args.input, args.version)
    except SubmissionError as exc:
        return _user_error(exc)
    for finding in findings:
        print(finding)
    errors = [f for f in findings if f.level == ERROR]
    not_met = [f for f in findings if f.level == TEST_RUN]
    print()
    print("Official checks NOT reproduced by this validator (run the MLCommons checker too):")
    for item in NOT_REPRODUCED:
        print(f"  - {item}")
    print()
    if errors:
        print(f"REJECTED: {len(errors)} error(s), {len(not_met)} test-run rule(s) not met.")
        return 1
    if not_met:
        print(
            f"ACCEPTED AS A TEST RUN: {len(not_met)} submission rule(s) NOT MET (listed above "
            "as 'NOT MET (test run)'); the official checker rejects these results. Re-run "
            "without --test_run for a submittable tree."
        )
    else:
        print(f"ACCEPTED: no errors under the {args.version} rules this validator checks.")
    return 0
