"""Greedy sampling over fp32 logits, with per-row EOS suppression (min_new_tokens, ignore_eos)."""

from __future__ import annotations

import torch


class Sampler:
    def __call__(
        self,
        logits: torch.Tensor,
        suppress_rows: torch.Tensor | None = None,
        suppress_cols: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """logits: [S, vocab] fp32; (suppress_rows[i], suppress_cols[i]) pairs ([P] int64 on
        the logits' device, None: none) are masked.

        Returns [S] int64 token ids. Greedy: ties go to the lowest id, as torch.argmax does.
        """
        if suppress_rows is not None:  # the value on the device: a host scalar would sync
            neg_inf = torch.full((1,), float("-inf"), dtype=logits.dtype, device=logits.device)
            logits.index_put_((suppress_rows, suppress_cols), neg_inf)
        return logits.argmax(dim=-1)
