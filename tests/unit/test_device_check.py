"""What a device cannot run is refused before any weight is loaded (llm_engine.check_device)."""

from __future__ import annotations

import pytest
import torch

from harness.engine.llm_engine import EngineArgs, LLMEngine, check_device


def test_fp8_kv_cache_on_cpu_is_refused_before_the_checkpoint_is_read():
    args = EngineArgs(device="cpu", kv_cache_dtype="fp8", model_path="/nonexistent/checkpoint")
    with pytest.raises(NotImplementedError, match="on cpu use kv_cache_dtype=auto"):
        LLMEngine.from_args(args)  # not FileNotFoundError: nothing was read yet


def test_the_embedding_on_host_on_cpu_is_refused_naming_the_knob():
    args = EngineArgs(device="cpu", embedding_on_host=True, model_path="/nonexistent/checkpoint")
    with pytest.raises(NotImplementedError, match="set embedding_on_host=false"):
        LLMEngine.from_args(args)


@pytest.mark.parametrize("kernel", ["mma", "wgmma", "cutlass"])
@pytest.mark.parametrize("device,model_opt", [("cpu", "Sparse"), ("cuda", "FP8")])
def test_a_sparse_kernel_off_a_cuda_sparse_engine_is_refused_naming_it(device, model_opt, kernel):
    args = EngineArgs(device=device, model_opt=model_opt, model_path="/none", sparse_kernel=kernel)
    with pytest.raises(
        NotImplementedError,
        match=f"sparse_kernel={kernel} .*model_opt={model_opt} on {device}.*sparse_kernel=triton",
    ):
        check_device(args)


def test_an_unknown_sparse_kernel_is_refused_naming_the_choices():
    args = EngineArgs(device="cuda", model_opt="Sparse", sparse_kernel="wmma")
    with pytest.raises(ValueError, match="'wmma' is none of triton, mma, wgmma, cutlass"):
        check_device(args)


@pytest.mark.parametrize("kernel", ["wgmma", "cutlass"])
def test_hoppers_sparse_kernels_off_hopper_are_refused_naming_the_gpu(gpu, kernel):
    gpu((8, 9), "NVIDIA L40S")
    args = EngineArgs(device="cuda", model_opt="Sparse", sparse_kernel=kernel, model_path="/none")
    with pytest.raises(NotImplementedError, match="NVIDIA L40S is 8.9: set sparse_kernel=triton"):
        check_device(args)


@pytest.mark.parametrize("kernel", ["mma", "cutlass"])
def test_a_sparse_kernel_without_a_cuda_compiler_is_refused_before_loading(
    gpu, monkeypatch, kernel
):
    gpu((9, 0), "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("NVCC", "/nonexistent/nvcc")
    monkeypatch.setenv("CUTLASS_PATH", "/nonexistent/cutlass")
    args = EngineArgs(device="cuda", model_opt="Sparse", sparse_kernel=kernel, model_path="/none")
    with pytest.raises(
        RuntimeError, match=f"sparse_kernel={kernel} needs its CUDA kernel.*nonexist"
    ):
        check_device(args)


def test_the_mma_kernel_is_built_in_the_check(gpu, monkeypatch, tmp_path):
    from harness.engine.kernels import sparse24_mma

    try:
        sparse24_mma.nvcc()
    except RuntimeError:
        pytest.skip("no nvcc here")
    gpu((9, 0), "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("HARNESS_KERNEL_CACHE", str(tmp_path))
    check_device(EngineArgs(device="cuda", model_opt="Sparse", sparse_kernel="mma"))
    assert [p.name.split("-")[1] for p in tmp_path.glob("sparse24_mma-*.cubin")] == ["sm_90a"]


@pytest.fixture
def gpu(monkeypatch):  # noqa: ANN201
    """A pretend GPU of a given compute capability (no CUDA is touched)."""

    def make(capability: tuple[int, int], name: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)

    return make


def test_fp8_on_a_gpu_without_fp8_tensor_cores_names_the_gpu_and_the_fix(gpu):
    gpu((8, 0), "NVIDIA A100-SXM4-80GB")
    args = EngineArgs(device="cuda", dtype="bfloat16", model_opt="Sparse", kv_cache_dtype="fp8")
    with pytest.raises(NotImplementedError) as err:
        check_device(args)
    msg = str(err.value)
    assert "model_opt=Sparse and kv_cache_dtype=fp8 need FP8 tensor cores" in msg
    assert "NVIDIA A100-SXM4-80GB is 8.0" in msg and "use model_opt=Dense" in msg


@pytest.mark.parametrize(
    "capability,model_opt,dtype,kv",
    [
        ((8, 0), "Dense", "bfloat16", "auto"),  # no FP8 asked for
        ((8, 0), "FP8", "float32", "auto"),  # fp32 models run the FP8 reference (tests)
        ((8, 9), "FP8", "bfloat16", "fp8"),  # Ada
        ((9, 0), "Sparse", "bfloat16", "fp8"),  # Hopper
    ],
)
def test_what_the_gpu_can_run_passes(gpu, capability, model_opt, dtype, kv):
    gpu(capability, "some GPU")
    check_device(EngineArgs(device="cuda", dtype=dtype, model_opt=model_opt, kv_cache_dtype=kv))
