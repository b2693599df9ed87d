"""Builds the C CPU kernels (cpu_paged_attention.c, cpu_elementwise.c) into one shared library
with the system's C compiler, once per source and CPU, and loads it through ctypes.

The wrappers live in cpu_attention.py and cpu_elementwise.py. Where no compiler works the
engine keeps its plain-torch ops and logs why, once. `compile_into` and `cache_dir` also build
the CUDA kernel of sparse24_mma.py.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = [HERE / "cpu_paged_attention.c", HERE / "cpu_elementwise.c"]
HEADERS = [HERE / "cpu_vec.h"]
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fPIC", "-shared"]

_P, _I, _F, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
# name: (argument types, return type), in the order of the C signatures
SIGNATURES = {
    "paged_decode_f32": ([_P, _I, *[_P] * 5, *[_I] * 7, _F, _INT], _INT),
    "write_kv_f32": ([_P, _I, _P, _I, *[_P] * 3, *[_I] * 4], None),
    "rms_norm_f32": ([_P, _I, _P, _P, _P, _I, _I, _F, _INT], None),
    "silu_mul_f32": ([_P, _I, _P, _I, _I, _INT], None),
    "rope_f32": ([_P, _I, _P, _P, _I, _I, _I, _INT], None),
}


def cache_dir() -> Path:
    """Where built kernels live: $HARNESS_KERNEL_CACHE, else ~/.cache/harness/kernels."""
    env = os.environ.get("HARNESS_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "harness" / "kernels"


def _cpu_signature() -> str:
    """-march=native code runs only where it was built: the CPU's flags key the cache."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return platform.machine() + flags


def build(compiler: str = "") -> Path:
    """Compile the kernels (or find them already built); returns the shared library's path.
    Raises RuntimeError with the compiler's message when it fails."""
    cc = compiler or os.environ.get("CC", "cc")
    text = b"".join(p.read_bytes() for p in [*SOURCES, *HEADERS])
    key = hashlib.sha256(text + " ".join([cc, *CFLAGS, _cpu_signature()]).encode()).hexdigest()
    lib = cache_dir() / f"cpu_kernels-{key[:16]}.so"
    if not lib.exists():
        cmd = [cc, *CFLAGS, f"-I{HERE}", *map(str, SOURCES), "-o", "{out}", "-lm"]
        compile_into(lib, cmd, timeout_s=120)
        logger.info("built the CPU kernels: %s", lib)
    return lib


def compile_into(target: Path, cmd: list[str], timeout_s: int = 300) -> None:
    """Run a compiler command whose "{out}" argument is the output file, writing a temporary
    file beside target and renaming it (concurrent builders each finish whole). Raises
    RuntimeError with the compiler's message when it fails; logs a warning for each kernel
    whose wgmma ptxas serialized (each MMA waiting for the one before: a slow build)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
    cmd = [tmp if arg == "{out}" else arg for arg in cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.unlink(tmp)
        raise RuntimeError(f"{' '.join(cmd)}: {e}") from e
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    for kernel in serialized_wgmma(proc.stdout + proc.stderr):
        logger.warning("%s: ptxas serialized the wgmma of %s", target.name, kernel)
    os.replace(tmp, target)


def serialized_wgmma(compiler_output: str) -> list[str]:
    """The kernels (mangled names) whose wgmma.mma_async ptxas reports serialized."""
    return re.findall(r"wgmma\.mma_async instructions are serialized .* function '([^']+)'",
                      compiler_output)  # fmt: skip


@functools.cache
def load() -> ctypes.CDLL | None:
    """The kernel library, or None (logged once) when it cannot be built here."""
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as e:
        logger.warning("CPU kernels unavailable, using torch ops: %s", e)
        return None
    for name, (argtypes, restype) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


def loaded() -> ctypes.CDLL:
    """The library, for wrappers the engine calls only where is_available() said yes."""
    lib = load()
    assert lib is not None, "a CPU kernel called where is_available() is False"
    return lib
