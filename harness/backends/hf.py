"""The `hf` reference backend: transformers LlamaForCausalLM, greedy, batched generate().

It is the accuracy golden reference for every other backend, not a fast path. Batches are
left-padded; outputs are cut at the first EOS (kept once) so no padding leaks out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from harness.backends.base import BackendError, GenerationRequest, QueueWorkerBackend
from harness.config.schema import HarnessConfig

logger = logging.getLogger(__name__)


def trim_output(tokens: list[int], eos_token_id: int | None) -> list[int]:
    """Generated ids -> the real output: up to and including the first EOS.

    Rows that stop early are padded by generate(); a row without EOS ran to max_new_tokens
    and holds no padding, so cutting after the first EOS removes all of it.
    """
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id) + 1]
    return tokens


class _FirstTokenStreamer:
    """transformers streamer: put() gets the prompt first, then one [batch] tensor per step."""

    def __init__(self, batch: list[GenerationRequest], backend: HFBackend) -> None:
        self.batch = batch
        self.backend = backend
        self.num_puts = 0

    def put(self, value) -> None:  # noqa: ANN001 (a torch tensor)
        self.num_puts += 1
        if self.num_puts != 2:  # put #1 is the prompt; put #2 carries the first new tokens
            return
        for request, token in zip(self.batch, value.reshape(-1).tolist(), strict=True):
            self.backend.sink.on_first_token(request.request_id, int(token))

    def end(self) -> None:
        pass


class HFBackend(QueueWorkerBackend):
    name = "hf"

    def __init__(self, model_path: Path, dtype: str, device: str, batch_size: int) -> None:
        super().__init__(max_batch=batch_size)
        import torch
        from transformers import AutoModelForCausalLM

        if not (model_path / "config.json").is_file():
            raise BackendError(
                f"{model_path}: no HF checkpoint (config.json missing); run `make preprocess_data` "
                "for the built-in default or pass --model_path=<HF folder>"
            )
        self.torch = torch
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.pad_token_id = self.model.generation_config.pad_token_id
        logger.info("hf backend: %s (%s on %s), batch %d", model_path, dtype, device, batch_size)

    @classmethod
    def from_config(cls, cfg: HarnessConfig) -> HFBackend:
        if cfg.engine.num_threads > 0:
            import torch

            torch.set_num_threads(cfg.engine.num_threads)
        return cls(
            Path(cfg.benchmark.model_path),
            cfg.engine.dtype,
            cfg.engine.device,
            cfg.engine.batch_size,
        )

    def _serve(self, batch: list[GenerationRequest]) -> None:
        # Requests of one generate() call share max/min lengths: split by those settings.
        groups: dict[tuple[int, int], list[GenerationRequest]] = {}
        for r in batch:
            groups.setdefault(self._lengths(r), []).append(r)
        for (min_new, max_new), group in groups.items():
            self._generate(group, min_new, max_new)

    @staticmethod
    def _lengths(r: GenerationRequest) -> tuple[int, int]:
        if r.fixed_output_len:
            return r.fixed_output_len, r.fixed_output_len
        return r.min_new_tokens, r.max_new_tokens

    def _generate(self, batch: list[GenerationRequest], min_new: int, max_new: int) -> None:
        torch = self.torch
        width = max(len(r.prompt_token_ids) for r in batch)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding: prompts end at the same column
            ids[i, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
            mask[i, width - len(r.prompt_token_ids) :] = 1
        eos = None if batch[0].fixed_output_len else batch[0].eos_token_id
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new,
                min_new_tokens=min_new,
                eos_token_id=eos,
                pad_token_id=pad,
                streamer=_FirstTokenStreamer(batch, self),
            )
        new_tokens = out[:, width:].tolist()
        for r, tokens in zip(batch, new_tokens, strict=True):
            self.sink.on_finished(r.request_id, trim_output(tokens, eos))
