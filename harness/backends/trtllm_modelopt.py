"""Build steps run as child processes: a ModelOpt FP8 HF checkpoint, and calibration text.

`python -m harness.backends.trtllm_modelopt fp8-checkpoint ...` quantizes with nvidia-modelopt
on the calibration subset of `make preprocess_data`; `calib-text ...` writes that subset as
text for quantize.py. Heavy imports (torch, transformers, modelopt) happen inside functions.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def load_calibration(calib_dir: Path, calib_size: int, max_len: int) -> list[list[int]]:
    """The first calib_size prompts of calibration/ (input_ids_padded [N, L] + input_lens [N]),
    each cut to max_len tokens, padding dropped."""
    ids = np.load(Path(calib_dir) / "input_ids_padded.npy", mmap_mode="r")  # [N, L] int32
    lens = np.load(Path(calib_dir) / "input_lens.npy")  # [N] int32
    n = min(calib_size, len(lens))
    return [ids[i, : min(int(lens[i]), max_len)].astype(int).tolist() for i in range(n)]


def fp8_quant_config(mtq: Any, kv_cache_fp8: bool) -> dict[str, Any]:
    """ModelOpt's FP8 preset (per-tensor e4m3 weights and activations), plus its FP8 KV-cache
    quantizers when asked; the presets are ModelOpt's, copied, never edited in place."""
    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    if kv_cache_fp8:
        kv = {k: v for k, v in mtq.FP8_KV_CFG["quant_cfg"].items() if k != "default"}
        cfg["quant_cfg"].update(copy.deepcopy(kv))
    return cfg


def write_calibration_text(
    calib_dir: Path, decode: Callable[[list[int]], str], out_dir: Path, calib_size: int
) -> Path:
    """out_dir/train.jsonl of {"text": prompt}: the local-dataset layout quantize.py reads
    (load_dataset(dir, split="train")["text"])."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "train.jsonl"
    prompts = load_calibration(calib_dir, calib_size, max_len=1 << 30)
    with open(path, "w") as f:
        for tokens in prompts:
            f.write(json.dumps({"text": decode(tokens)}) + "\n")
    logger.info("wrote %d calibration prompts to %s", len(prompts), path)
    return path


def quantize_fp8_checkpoint(
    model_dir: Path, calib_dir: Path, output_dir: Path, dtype: str, calib_size: int,
    max_len: int, kv_cache_fp8: bool,
) -> Path:  # fmt: skip
    """Calibrate FP8 scales with ModelOpt and export a unified HF checkpoint (safetensors +
    hf_quant_config.json) that TensorRT-LLM's PyTorch backend loads directly. Needs CUDA."""
    import modelopt.torch.quantization as mtq
    import torch
    from modelopt.torch.export import export_hf_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not torch.cuda.is_available():
        raise RuntimeError("ModelOpt FP8 calibration needs a CUDA GPU; run this on the GPU machine")
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), torch_dtype=getattr(torch, dtype), device_map="auto"
    )
    model.eval()
    prompts = load_calibration(calib_dir, calib_size, max_len)
    device = next(model.parameters()).device

    def forward_loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for tokens in prompts:
                m(torch.tensor([tokens], dtype=torch.long, device=device))  # [1, T]

    mtq.quantize(model, fp8_quant_config(mtq, kv_cache_fp8), forward_loop)
    with torch.inference_mode():
        export_hf_checkpoint(model, export_dir=str(output_dir))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(output_dir))
    logger.info("FP8 checkpoint written: %s (%d calibration prompts)", output_dir, len(prompts))
    return Path(output_dir)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    p = argparse.ArgumentParser(prog="python -m harness.backends.trtllm_modelopt")
    sub = p.add_subparsers(dest="command", required=True)
    fp8 = sub.add_parser("fp8-checkpoint")
    fp8.add_argument("--model_dir", type=Path, required=True)
    fp8.add_argument("--calib_dir", type=Path, required=True)
    fp8.add_argument("--output_dir", type=Path, required=True)
    fp8.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    fp8.add_argument("--calib_size", type=int, default=1024)
    fp8.add_argument("--calib_max_seq_length", type=int, default=1024)
    fp8.add_argument("--kv_cache_dtype", default="auto", choices=["auto", "fp8"])
    text = sub.add_parser("calib-text")
    text.add_argument("--calib_dir", type=Path, required=True)
    text.add_argument("--tokenizer_dir", type=Path, required=True)
    text.add_argument("--output_dir", type=Path, required=True)
    text.add_argument("--calib_size", type=int, default=1024)
    args = p.parse_args(argv)
    if args.command == "fp8-checkpoint":
        quantize_fp8_checkpoint(
            args.model_dir, args.calib_dir, args.output_dir, args.dtype, args.calib_size,
            args.calib_max_seq_length, args.kv_cache_dtype == "fp8",
        )  # fmt: skip
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer_dir))
        write_calibration_text(
            args.calib_dir,
            lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            args.output_dir,
            args.calib_size,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
