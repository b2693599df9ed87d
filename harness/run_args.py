"""NVIDIA-style RUN_ARGS: selection flags plus `--<config_key>=<value>` for any config field."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field

from harness.config.loader import ConfigError
from harness.config.schema import BACKENDS, CONFIG_VERS, MODEL_OPTS, SCENARIOS, TEST_MODES

DEFAULT_BENCHMARK = "smollm2-135m"
# Flags that are config fields under another section (kept as flags for NVIDIA parity).
FLAG_TO_KEY = {
    "backend": "engine.backend",
    "model_opt": "engine.model_opt",
    "test_mode": "run.test_mode",
    "config_ver": "run.config_ver",
    "log_dir": "run.log_dir",
}


@dataclass
class RunArgs:
    benchmarks: list[str]
    scenarios: list[str]
    system_name: str | None
    test_run: bool
    force: bool
    verbose: bool
    audit_test: str
    overrides: dict[str, str] = field(default_factory=dict)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{flag}={value} is not allowed; choose one of: {', '.join(choices)}")


def parse_run_args(argv: list[str] | str) -> RunArgs:
    if isinstance(argv, str):
        argv = shlex.split(argv)
    p = argparse.ArgumentParser(prog="RUN_ARGS", add_help=False, allow_abbrev=False)
    p.add_argument("--benchmarks", default=DEFAULT_BENCHMARK)
    p.add_argument("--scenarios", default="Offline")
    p.add_argument("--system_name", default=None)
    p.add_argument("--test_run", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--audit_test", default="", choices=["", "TEST06"])
    known, rest = p.parse_known_args(argv)
    scenarios = _csv(known.scenarios)
    for s in scenarios:
        _check_choice("scenarios", s, SCENARIOS)
    overrides = _parse_overrides(rest)
    checks = {
        "engine.backend": BACKENDS,
        "engine.model_opt": MODEL_OPTS,
        "run.test_mode": TEST_MODES,
        "run.config_ver": CONFIG_VERS,
    }
    for key, choices in checks.items():
        if key in overrides:
            _check_choice(key.split(".")[1], overrides[key], choices)
    return RunArgs(
        benchmarks=_csv(known.benchmarks),
        scenarios=scenarios,
        system_name=known.system_name,
        test_run=known.test_run,
        force=known.force,
        verbose=known.verbose,
        audit_test=known.audit_test,
        overrides=overrides,
    )


def _parse_overrides(rest: list[str]) -> dict[str, str]:
    """['--max_num_seqs=64', '--dummy_weights', '--dtype', 'bfloat16'] -> {key: raw value}."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; RUN_ARGS take the form --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:  # "--flag value" or a bare boolean "--flag"
            if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                value = rest[i + 1]
                i += 1
            else:
                value = "true"
        overrides[FLAG_TO_KEY.get(key, key)] = value
        i += 1
    return overrides
