"""Loads and merges the YAML layers into one validated, read-only HarnessConfig.

Fixed merge order (later wins), printed with the resolved config:
  schema defaults -> configs/<benchmark>/benchmark.yaml -> configs/<benchmark>/<scenario>.yaml
  -> systems/<system>.yaml `defaults:` -> its `benchmarks.<benchmark>.<scenario>:` section
  -> that section's `backends.<the resolved engine.backend>:` -> its
  `model_opts.<the resolved engine.model_opt>:` -> --test_run settings
  -> command-line overrides (--<key>=<value>).
Imports nothing else from the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.config.schema import AT_LEAST_ONE, AT_LEAST_ZERO, CHOICES, LAYER_LIST, HarnessConfig

SECTIONS = tuple(f.name for f in dataclasses.fields(HarnessConfig))
# Short settings of --test_run (NVIDIA's meaning: min_duration 1 min, few queries).
TEST_RUN_SETTINGS = {
    "min_duration_ms": 60000,
    "min_query_count": 64,
    "sample_concatenate_permutation": False,  # equal issue would pad Offline to 24576 samples
}


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it and the fix."""


@dataclass(frozen=True)
class Layer:
    source: str  # file path or "command line"
    values: dict[str, Any]  # {section: {key: value}}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def leaf_index() -> dict[str, list[str]]:
    """leaf key -> ['section.key', ...]; a leaf in two sections needs its section prefix."""
    schema = OmegaConf.structured(HarnessConfig)
    index: dict[str, list[str]] = {}
    for section in SECTIONS:
        for key in schema[section]:
            index.setdefault(key, []).append(f"{section}.{key}")
    return index


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _check_sections(values: dict[str, Any], source: str, where: str = "") -> dict[str, Any]:
    for key, value in values.items():
        if key not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section '{where}{key}'; allowed: {', '.join(SECTIONS)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}{key}' must be a mapping of keys to values")
    return values


def available(kind: str) -> list[str]:
    root = repo_root()
    if kind == "benchmarks":
        return sorted(p.parent.name for p in (root / "configs").glob("*/benchmark.yaml"))
    return sorted(p.stem for p in (root / "systems").glob("*.yaml"))


def benchmark_layers(benchmark: str, scenario: str) -> list[Layer]:
    root = repo_root()
    bench_dir = root / "configs" / benchmark
    if not (bench_dir / "benchmark.yaml").is_file():
        raise ConfigError(
            f"{bench_dir / 'benchmark.yaml'}: unknown benchmark '{benchmark}'; "
            f"available: {', '.join(available('benchmarks'))}"
        )
    layers = []
    for name in ("benchmark.yaml", f"{scenario}.yaml"):
        path = bench_dir / name
        if name != "benchmark.yaml" and not path.is_file():
            scenarios = sorted(p.stem for p in bench_dir.glob("*.yaml") if p.stem != "benchmark")
            raise ConfigError(
                f"{path}: benchmark '{benchmark}' has no scenario '{scenario}'; "
                f"available: {', '.join(scenarios)}"
            )
        layers.append(Layer(str(path), _check_sections(_read_yaml(path), str(path))))
    return layers


def system_layers(
    system: str, benchmark: str, scenario: str
) -> tuple[list[Layer], dict[str, Layer], dict[str, Layer]]:
    """The system file's layers, and its scenario section's `model_opts` layers by model_opt
    name and `backends` layers by backend name (each checked here, whichever the run resolves
    to)."""
    path = repo_root() / "systems" / f"{system}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{path}: unknown system '{system}'; available: {', '.join(available('systems'))}. "
            "To add a machine, copy the closest systems/*.yaml to systems/<name>.yaml, set its "
            "hardware facts and knobs, and pass --system_name=<name>"
        )
    data = _read_yaml(path)
    allowed = {"system", "defaults", "benchmarks"}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    layers = [Layer(str(path), {"system": data.get("system") or {}})]
    layers.append(
        Layer(
            f"{path} (defaults)",
            _check_sections(data.get("defaults") or {}, str(path), "defaults."),
        )
    )
    per_bench = (data.get("benchmarks") or {}).get(benchmark) or {}
    section = dict(per_bench.get(scenario) or {})
    where = f"benchmarks.{benchmark}.{scenario}."
    per_opt = section.pop("model_opts", None)
    per_backend = section.pop("backends", None)
    layers.append(Layer(f"{path} ({where[:-1]})", _check_sections(section, str(path), where)))
    opt_layers = _named_layers(path, f"{where}model_opts", per_opt, "model_opt")
    backend_layers = _named_layers(path, f"{where}backends", per_backend, "backend")
    return layers, opt_layers, backend_layers


def _named_layers(path: Path, where: str, named: Any, key: str) -> dict[str, Layer]:
    """A section's `model_opts:` or `backends:` map: one checked layer per engine.<key> value.
    No such layer sets engine.model_opt or engine.backend: those pick the layers."""
    choices = CHOICES[f"engine.{key}"]
    named = named or {}
    if not isinstance(named, dict) or set(named) - set(choices):
        raise ConfigError(
            f"{path}: '{where}' must map {key} names ({', '.join(choices)}) to "
            f"sections, got {named!r}"
        )
    layers = {}
    for name, section in named.items():
        name_where = f"{where}.{name}."
        values = _check_sections(section or {}, str(path), name_where)
        if pickers := sorted({"model_opt", "backend"} & set(values.get("engine") or {})):
            raise ConfigError(
                f"{path}: '{name_where}engine.{pickers[0]}' cannot be set there: remove it"
            )
        layers[name] = Layer(f"{path} ({name_where[:-1]})", values)
    return layers


def parse_overrides(overrides: dict[str, str]) -> Layer:
    """{'max_num_seqs': '64', 'engine.block_size': '32'} -> a layer; unknown keys are errors."""
    index = leaf_index()
    values: dict[str, dict[str, Any]] = {}
    for key, raw in overrides.items():
        paths = [key] if "." in key else index.get(key, [])
        if len(paths) > 1:
            raise ConfigError(
                f"command line: --{key} is ambiguous; use one of --{', --'.join(paths)}"
            )
        path = paths[0] if paths else None
        if path is None or path.split(".", 1)[0] not in SECTIONS:
            close = [k for k in index if key.split(".")[-1][:4] in k][:8]
            raise ConfigError(
                f"command line: unknown option --{key}; "
                f"similar config keys: {', '.join(close) or 'none'} (see harness/config/schema.py)"
            )
        section, leaf = path.split(".", 1)
        values.setdefault(section, {})[leaf] = yaml.safe_load(raw) if raw != "" else ""
    return Layer("command line", values)


_UNKNOWN = object()  # OmegaConf.select default: the key is not in the schema


def merge(layers: list[Layer]) -> DictConfig:
    cfg = OmegaConf.structured(HarnessConfig)
    for layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer.values)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            section = key.split(".", 1)[0]
            hint = ""
            current = OmegaConf.select(cfg, key, default=_UNKNOWN) if section in SECTIONS else None
            if current is _UNKNOWN:
                hint = "; allowed keys in '" + section + "': " + ", ".join(cfg[section].keys())
            elif current is not None:  # a known key given a value of the wrong type
                hint = f"; expected {type(current).__name__}, e.g. the default {current!r}"
            msg = str(e).splitlines()[0]
            raise ConfigError(f"{layer.source}: key '{key}': {msg}{hint}") from e
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(
                f"{key} = {value!r} is not allowed; choose one of: {', '.join(choices)}"
            )
    for key in AT_LEAST_ONE:
        value = OmegaConf.select(cfg, key)
        if value < 1:
            raise ConfigError(
                f"{_source_of(key, layers)}: {key} = {value!r}; it is a count and must be >= 1: "
                "set it to 1 or more"
            )
    for key in AT_LEAST_ZERO:
        value = OmegaConf.select(cfg, key)
        if value < 0:
            raise ConfigError(
                f"{_source_of(key, layers)}: {key} = {value!r}; it must be >= 0 (0: off): "
                "set it to 0 or more"
            )
    rows = OmegaConf.select(cfg, "engine.cuda_graph_min_decode_rows")
    budget = OmegaConf.select(cfg, "engine.max_num_batched_tokens")
    if rows > budget:
        raise ConfigError(
            f"{_source_of('engine.cuda_graph_min_decode_rows', layers)}: "
            f"engine.cuda_graph_min_decode_rows = {rows} exceeds engine.max_num_batched_tokens = "
            f"{budget}: a decode graph holds a token a row, and no step holds more than the "
            "budget; set it to at most max_num_batched_tokens (0: off)"
        )
    seqs = OmegaConf.select(cfg, "engine.max_num_seqs")
    if budget < seqs:
        raise ConfigError(
            f"engine.max_num_batched_tokens = {budget} (set by "
            f"{_source_of('engine.max_num_batched_tokens', layers)}) is under "
            f"engine.max_num_seqs = {seqs} (set by {_source_of('engine.max_num_seqs', layers)}): "
            "every running sequence decodes a token a step, and a step holds at most the "
            f"budget, so {seqs - budget} sequences would wait a step with their KV held; set "
            f"max_num_batched_tokens to at least {seqs} (plus room for prompt chunks)"
        )
    util = OmegaConf.select(cfg, "engine.gpu_memory_utilization")
    if not 0 < util <= 1:
        raise ConfigError(
            f"{_source_of('engine.gpu_memory_utilization', layers)}: "
            f"engine.gpu_memory_utilization = {util!r}; it is the share of the device's memory "
            "(CPU: of MemAvailable) the engine may fill: set it above 0 and at most 1, e.g. 0.9"
        )
    dense_layers = str(OmegaConf.select(cfg, "engine.fp8_dense_layers"))
    if not re.fullmatch(LAYER_LIST, dense_layers):
        raise ConfigError(
            f"{_source_of('engine.fp8_dense_layers', layers)}: engine.fp8_dense_layers = "
            f"{dense_layers!r}; give decoder layer indices separated by commas, e.g. '0,-1', "
            "or '' for none"
        )
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required config key(s): {', '.join(missing)}")
    return cfg


def _source_of(key: str, layers: list[Layer]) -> str:
    """The last layer (file or command line) that set section.key; else the schema default."""
    section, leaf = key.split(".", 1)
    for layer in reversed(layers):
        if leaf in (layer.values.get(section) or {}):
            return layer.source
    return "harness/config/schema.py (default)"


def load_config(
    benchmark: str,
    scenario: str,
    system: str,
    overrides: dict[str, str] | None = None,
    test_run: bool = False,
) -> HarnessConfig:
    test_run_values = {"scenario": dict(TEST_RUN_SETTINGS), "run": {"test_run": True}}
    late = [Layer("--test_run", test_run_values)] if test_run else []
    late.append(parse_overrides(overrides or {}))
    layers, opt_layers, backend_layers = system_layers(system, benchmark, scenario)
    layers = benchmark_layers(benchmark, scenario) + layers
    cfg = merge(layers + late)
    # The model_opt and backend (command line, or the files) pick the system's model_opts and
    # backends layers, if any.
    named = (backend_layers.get(cfg.engine.backend), opt_layers.get(cfg.engine.model_opt))
    picked = [layer for layer in named if layer is not None]
    if picked:
        cfg = merge(layers + picked + late)
    OmegaConf.set_readonly(cfg, True)
    return OmegaConf.to_object(cfg)


def load_resolved(path: Path) -> HarnessConfig:
    """A config.yaml written by to_yaml() (a run directory's) back into a HarnessConfig."""
    return OmegaConf.to_object(merge([Layer(str(path), _read_yaml(path))]))


def to_yaml(cfg: HarnessConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_hash(cfg: HarnessConfig) -> str:
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]
