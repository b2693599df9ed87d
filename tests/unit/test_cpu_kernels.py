"""The C elementwise kernels against their plain-torch references, and how the C kernels are
built and loaded (kernels/cpu_build.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.engine.kernels import cpu_build, cpu_elementwise
from harness.engine.kernels.activation import silu_mul_reference
from harness.engine.kernels.rms_norm import rms_norm_reference
from harness.engine.kernels.rope import rope_reference

needs_kernels = pytest.mark.skipif(
    not cpu_elementwise.is_available(torch.float32), reason="no C compiler for the CPU kernels"
)
# (tokens, width): one row, a decode batch, a prefill chunk past the one-thread cut-off
SHAPES = [(1, 8), (7, 576), (300, 576), (33, 100)]


@needs_kernels
@pytest.mark.parametrize("n,h", SHAPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(n, h, with_residual):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 2 * h, generator=g)[:, :h] * 3  # strided rows, as a view may be
    weight = torch.randn(h, generator=g)
    residual = torch.randn(n, h, generator=g) if with_residual else None
    want_res = residual.clone() if with_residual else None
    want, want_res = rms_norm_reference(x, weight, 1e-5, want_res)
    got, got_res = cpu_elementwise.rms_norm_cpu(x, weight, 1e-5, residual)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)  # another summation order
    if with_residual:
        assert got_res is residual and torch.equal(got_res, want_res)  # the add is exact
    else:
        assert got_res is None


@needs_kernels
@pytest.mark.parametrize("n,h", SHAPES)
def test_silu_mul_matches_reference(n, h):
    g = torch.Generator().manual_seed(n)
    gate_up = torch.randn(n, 2 * h, generator=g) * 8
    gate_up[0, :4] = torch.tensor([-200.0, -88.5, 90.0, 0.0])[: min(4, h)]  # exp's edges
    torch.testing.assert_close(
        cpu_elementwise.silu_mul_cpu(gate_up), silu_mul_reference(gate_up), rtol=1e-6, atol=1e-6
    )


@needs_kernels
@pytest.mark.parametrize("n,q_heads,kv_heads,d", [(1, 4, 4, 8), (5, 9, 3, 64), (400, 8, 2, 128)])
def test_rope_is_bit_identical_to_reference(n, q_heads, kv_heads, d):
    """In place on a view of the fused qkv rows (q and k heads), as the model calls it."""
    g = torch.Generator().manual_seed(n)
    qkv = torch.randn(n, (q_heads + 2 * kv_heads) * d, generator=g)
    qk = qkv[:, : (q_heads + kv_heads) * d].view(n, -1, d)
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(1024).float(), inv)
    emb = torch.cat((freqs, freqs), -1)
    cos_sin = torch.stack((emb.cos(), emb.sin()), dim=1)  # [max_pos, 2, D]
    positions = torch.randint(0, 1024, (n,), generator=g)
    gathered = cos_sin[positions]
    want = rope_reference(qk, gathered[:, 0:1], gathered[:, 1:2])
    v_before = qkv[:, (q_heads + kv_heads) * d :].clone()
    got = cpu_elementwise.rope_cpu_(qk, positions, cos_sin)
    assert got is qk and torch.equal(got, want)
    assert torch.equal(qkv[:, (q_heads + kv_heads) * d :], v_before)  # v untouched


def test_only_fp32():
    assert not cpu_elementwise.is_available(torch.bfloat16)


def test_build_failure_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_KERNEL_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="no-such-cc"):
        cpu_build.build(compiler=str(tmp_path / "no-such-cc"))
    assert not list(tmp_path.glob("*.so"))  # nothing half-written is left to be loaded


@needs_kernels
def test_build_is_cached_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_KERNEL_CACHE", str(tmp_path))
    first = cpu_build.build()
    assert first.exists() and cpu_build.build() == first  # found, not rebuilt
    edited = tmp_path / "cpu_elementwise.c"
    edited.write_text(cpu_build.SOURCES[1].read_text() + "\n/* edited */\n")
    monkeypatch.setattr(cpu_build, "SOURCES", [cpu_build.SOURCES[0], edited])
    assert cpu_build.build() != first


@pytest.mark.skipif(
    not (Path(torch.__file__).parent / "lib" / "libgomp.so.1").exists(),
    reason="this torch build does not ship libgomp",
)
@needs_kernels
def test_kernels_share_torchs_openmp_runtime():
    """A second OpenMP runtime would keep its own threads, fighting torch's for the cores.
    Checked in a fresh process: other packages (sentencepiece) bring libgomps of their own."""
    script = (
        "import torch\n"
        "from harness.engine.kernels import cpu_build\n"
        "assert cpu_build.load() is not None\n"
        "print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    runtimes = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert runtimes == [str((Path(torch.__file__).parent / "lib" / "libgomp.so.1").resolve())]
