"""Which TensorRT-LLM is installed and whether it can serve the requested runtime.

Reads package metadata only: nothing here imports tensorrt_llm (importing it needs CUDA), so
the CLI and configs stay importable on any machine. The one lazy import is `import_llm_class`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re

from harness.backends.base import BackendError

logger = logging.getLogger(__name__)

RUNTIME_PYTORCH = "pytorch"  # `from tensorrt_llm import LLM`: default backend since 1.0
RUNTIME_ENGINE = "tensorrt_engine"  # trtllm-build engines via tensorrt_llm._tensorrt_engine.LLM
RUNTIMES = (RUNTIME_PYTORCH, RUNTIME_ENGINE)

TESTED_VERSION = "1.2.1"  # the release this backend was written against (docs/trtllm.md)
# (first, last) supported (major, minor); None: no upper bound known.
SUPPORTED: dict[str, tuple[tuple[int, int], tuple[int, int] | None]] = {
    RUNTIME_PYTORCH: ((1, 0), None),
    # The engine backend was removed from main after 1.2.x (TensorRT-LLM PRs #15763, #15918).
    RUNTIME_ENGINE: ((1, 0), (1, 2)),
}
LLM_IMPORTS = {
    RUNTIME_PYTORCH: ("tensorrt_llm", "LLM"),
    RUNTIME_ENGINE: ("tensorrt_llm._tensorrt_engine", "LLM"),
}
INSTALL_HINT = (
    f"install it on a CUDA machine: `pip install tensorrt-llm=={TESTED_VERSION}` "
    "(NVIDIA's wheel; needs an NVIDIA GPU, its driver and CUDA 12/13 runtime libraries, "
    "see https://nvidia.github.io/TensorRT-LLM/installation/linux.html)"
)


class TrtllmUnavailableError(BackendError):
    """tensorrt_llm (or nvidia-modelopt) is missing or of a version that cannot do this."""


def installed_version(distribution: str = "tensorrt-llm") -> str | None:
    """The installed version of a distribution from its metadata, or None when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, int, int]:
    """'1.2.1' -> (1, 2, 1); '1.3.0rc24' -> (1, 3, 0); pre-release tags count as their release."""
    m = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", version)
    if m is None:
        raise TrtllmUnavailableError(f"cannot parse the tensorrt_llm version {version!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def supports(version: str, runtime: str) -> bool:
    first, last = SUPPORTED[runtime]
    major_minor = release(version)[:2]
    return major_minor >= first and (last is None or major_minor <= last)


def require_trtllm(runtime: str) -> str:
    """The installed tensorrt_llm version, or TrtllmUnavailableError saying how to get one."""
    if runtime not in RUNTIMES:
        raise TrtllmUnavailableError(
            f"trtllm runtime {runtime!r} is unknown; choose one of {', '.join(RUNTIMES)}"
        )
    version = installed_version()
    if version is None:
        raise TrtllmUnavailableError(
            f"--backend=trtllm needs the tensorrt_llm package, which is not installed; "
            f"{INSTALL_HINT}; or run with --backend=torch"
        )
    if not supports(version, runtime):
        first, last = SUPPORTED[runtime]
        span = f">= {first[0]}.{first[1]}" + (f", <= {last[0]}.{last[1]}.x" if last else "")
        if runtime == RUNTIME_ENGINE and last is not None and release(version)[:2] > last:
            why = (
                f"tensorrt_llm {version} no longer has the TensorRT engine backend "
                "(trtllm-build, tensorrt_llm._tensorrt_engine); it was removed after 1.2.x"
            )
            fix = (
                f"`pip install tensorrt-llm=={TESTED_VERSION}`, or build for the PyTorch "
                "runtime (HARNESS_TRTLLM_RUNTIME=pytorch; model_opt Dense or FP8)"
            )
        else:
            why = f"tensorrt_llm {version} is not supported for the {runtime} runtime ({span})"
            fix = f"`pip install tensorrt-llm=={TESTED_VERSION}`"
        raise TrtllmUnavailableError(f"{why}; fix: {fix}")
    if release(version)[:2] != release(TESTED_VERSION)[:2]:
        logger.warning(
            "tensorrt_llm %s: this backend was written against %s; other versions are untested",
            version, TESTED_VERSION,
        )  # fmt: skip
    return version


def require_modelopt() -> str:
    version = installed_version("nvidia-modelopt")
    if version is None:
        raise TrtllmUnavailableError(
            "the FP8 checkpoint for the trtllm PyTorch runtime is made with NVIDIA ModelOpt, "
            "which is not installed; fix: `pip install nvidia-modelopt[torch]` on the CUDA "
            f"machine (tensorrt-llm=={TESTED_VERSION} normally brings it along)"
        )
    return version


def import_llm_class(runtime: str) -> type:
    """tensorrt_llm.LLM (PyTorch) or tensorrt_llm._tensorrt_engine.LLM (engines), imported now."""
    version = require_trtllm(runtime)
    module_name, attr = LLM_IMPORTS[runtime]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, OSError, RuntimeError) as err:
        raise TrtllmUnavailableError(
            f"tensorrt_llm {version} is installed but `from {module_name} import {attr}` "
            f"failed: {err!r}; check the CUDA driver/libraries (nvidia-smi) or reinstall: "
            f"{INSTALL_HINT}"
        ) from err


def import_symbol(module_name: str, attr: str) -> object:
    """One more tensorrt_llm symbol (SamplingParams, KvCacheConfig, ...), imported lazily."""
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, OSError, RuntimeError) as err:
        raise TrtllmUnavailableError(
            f"`from {module_name} import {attr}` failed: {err!r}; {INSTALL_HINT}"
        ) from err
