"""FP8's effect on greedy decoding, measured without the chaos of diverging answers.

An accuracy run's ROUGE and length under FP8 depend on where FP8 first flips a greedy choice:
from there on the answer is another text. This tool feeds the fp32 run's own answers (its
AccuracyOnly log) back token by token (teacher forcing) through the fp32 checkpoint and
through an FP8 copy made with the engine's quantization (quant/fp8.py: per-channel e4m3
weights, per-token e4m3 activations; the head and `--dense_layers` stay fp32), and counts at
every answer position whether each model's argmax is the logged token: the flip rate, the
answers FP8 would reproduce whole, and how FP8 treats EOS (ending early, or not ending where
fp32 did), plus the logged tokens' mean negative log-likelihood under each model.

`--scheme` asks where the flips come from, with FP8 simulated in plain torch (round to e4m3
and back): `weights` (per-channel weights only), `activations` (per-token activations only),
`group32` / `group64` ... (both, one scale per N consecutive inputs instead of per row).

Run: python -m harness.report.fp8_fidelity \
    --accuracy_log=build/logs/<fp32 run>/cpu-default/smollm2-135m/Offline/mlperf_log_accuracy.json \
    --dense_layers=0,-1 --dense_layers= --samples=100   [--model_opt=Sparse]
    [--scheme=engine --scheme=weights --scheme=activations --scheme=group32]
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness.engine.quant.fp8 import FP8Config, FP8LinearMethod, quantize_per_token

SCHEMES = ("engine", "weights", "activations")  # and groupN


class FP8Linear(nn.Module):
    """An nn.Linear run through the engine's CPU FP8 linear method (e4m3 weights, pruned 2:4
    first for Sparse)."""

    def __init__(self, linear: nn.Linear, method: FP8LinearMethod) -> None:
        super().__init__()
        method.create_weights(self, linear.in_features, linear.out_features, linear.weight.dtype)
        method.load_dense(self, linear.weight.detach(), slice(None))
        self.method = method
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.method.apply(self, x)
        return y if self.bias is None else y + self.bias


def round_trip_fp8(x: torch.Tensor, group: int) -> torch.Tensor:
    """x rounded to e4m3 and back, one scale per `group` consecutive values of its last
    dimension (0: one per row), as fp32: the engine's per-row quantization on rows of `group`."""
    q, scale = quantize_per_token(x.float().reshape(-1, group or x.shape[-1]))
    return (q.float() * scale).reshape(x.shape)


class SimulatedFP8Linear(nn.Module):
    """An nn.Linear with its weights and/or inputs rounded to e4m3 (group: scale granularity,
    0 for per channel / per token; None: that side left exact)."""

    def __init__(self, linear: nn.Linear, weight_group: int | None, input_group: int | None):
        super().__init__()
        w = linear.weight.detach()
        self.weight = w.float() if weight_group is None else round_trip_fp8(w, weight_group)
        self.input_group, self.bias = input_group, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_group is not None:
            x = round_trip_fp8(x, self.input_group).to(x.dtype)
        return nn.functional.linear(x, self.weight.to(x.dtype), self.bias)


def scheme_groups(scheme: str) -> tuple[int | None, int | None]:
    """A --scheme other than engine -> (weight group, input group) for SimulatedFP8Linear."""
    if scheme == "weights":
        return 0, None
    if scheme == "activations":
        return None, 0
    size = scheme.removeprefix("group")
    if scheme.startswith("group") and size.isdigit() and int(size) > 0:
        return int(size), int(size)
    raise ValueError(f"--scheme={scheme}: use one of {', '.join(SCHEMES)} or groupN (N >= 1)")


def quantize_model(
    model: nn.Module, dense_layers: frozenset[int], sparse24: bool, scheme: str = "engine"
) -> int:
    """Swap, in place, every linear that the engine's FP8Config quantizes (not the head, not
    dense_layers) for an FP8Linear (scheme engine) or a SimulatedFP8Linear; returns how many
    were swapped."""
    quant = FP8Config(torch.device("cpu"), sparse24, dense_layers=dense_layers)
    groups = None if scheme == "engine" else scheme_groups(scheme)
    swapped = 0
    for name, module in list(model.named_modules()):
        method = quant.linear_method(name) if isinstance(module, nn.Linear) else None
        if isinstance(method, FP8LinearMethod):
            parent, _, attr = name.rpartition(".")
            if groups is None:
                new: nn.Module = FP8Linear(module, method)
            else:
                new = SimulatedFP8Linear(module, *groups)
            setattr(model.get_submodule(parent), attr, new)
            swapped += 1
    return swapped


@dataclass
class Fidelity:
    answers: int = 0
    positions: int = 0  # answer tokens scored
    flips: int = 0  # positions where the quantized model's argmax is not the logged token
    reference_flips: int = 0  # the same for the fp32 checkpoint itself (summation order)
    whole_answers: int = 0  # answers without a flip
    first_flip_sum: int = 0  # over answers with a flip: the index of the first one
    eos_ends: int = 0  # answers whose last logged token is EOS
    eos_kept: int = 0  # ... where the quantized model also picks EOS
    early_eos: int = 0  # positions before the end where it picks EOS
    nll_reference: float = 0.0  # summed over positions
    nll_quantized: float = 0.0

    def line(self) -> str:
        flipped = self.answers - self.whole_answers
        pos = max(self.positions, 1)
        return (
            f"{self.answers} answers, {self.positions:,} tokens: {self.flips / pos:.2%} of "
            f"the greedy choices flipped (the fp32 checkpoint "
            f"{self.reference_flips / pos:.2%}); {self.whole_answers} answers "
            f"({self.whole_answers / max(self.answers, 1):.0%}) without a flip, the others' "
            f"first flip at token {self.first_flip_sum / max(flipped, 1):.1f} on average; EOS "
            f"kept at {self.eos_kept} of {self.eos_ends} ends, chosen early at "
            f"{self.early_eos} positions; NLL a token {self.nll_reference / pos:.4f} (fp32) -> "
            f"{self.nll_quantized / pos:.4f}"
        )


@torch.no_grad()
def measure(
    reference: nn.Module, quantized: nn.Module, samples: list[tuple[list[int], list[int]]],
    eos_token_id: int,
) -> Fidelity:  # fmt: skip
    """samples: (prompt ids, logged answer ids); both models are causal LMs whose forward
    returns `.logits` [1, T, vocab]."""
    f = Fidelity()
    for prompt, answer in samples:
        if not answer:
            continue
        ids = torch.tensor([prompt + answer])
        span = slice(len(prompt) - 1, len(prompt) - 1 + len(answer))  # logits predicting answer
        target = torch.tensor(answer)
        ref_logp = reference(ids).logits[0, span].float().log_softmax(-1)
        q_logp = quantized(ids).logits[0, span].float().log_softmax(-1)
        q_top = q_logp.argmax(-1)
        flips = (q_top != target).nonzero().flatten()
        f.answers += 1
        f.positions += len(answer)
        f.flips += len(flips)
        f.reference_flips += int((ref_logp.argmax(-1) != target).sum())
        f.whole_answers += len(flips) == 0
        f.first_flip_sum += int(flips[0]) if len(flips) else 0
        if answer[-1] == eos_token_id:
            f.eos_ends += 1
            f.eos_kept += int(q_top[-1]) == eos_token_id
        f.early_eos += int((q_top[:-1] == eos_token_id).sum())
        f.nll_reference -= float(ref_logp.gather(1, target[:, None]).sum())
        f.nll_quantized -= float(q_logp.gather(1, target[:, None]).sum())
    return f


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM

    from harness.accuracy.errors import AccuracyInputError
    from harness.accuracy.log_reader import iter_log_samples
    from harness.dataset import Dataset, DatasetMissingError
    from harness.engine.quant.base import dense_layers_from

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accuracy_log", required=True, help="the fp32 run's mlperf_log_accuracy.json")
    p.add_argument("--model_path", default="build/models/SmolLM2-135M-Instruct")
    p.add_argument("--preprocessed_dir", default="build/preprocessed_data/smollm2-default")
    p.add_argument("--model_opt", default="FP8", choices=["FP8", "Sparse"])
    p.add_argument("--dense_layers", action="append", help="repeat to compare ('' for none)")
    p.add_argument("--samples", type=int, default=100, help="the first N of the dataset (0: all)")
    p.add_argument(
        "--scheme", action="append",
        help="engine (default), weights, activations or groupN; repeat to compare (FP8 only)",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.samples < 0:
        p.error(f"--samples={a.samples}: use 0 (all) or more")
    schemes = a.scheme or ["engine"]
    for scheme in schemes:
        if scheme != "engine":
            if a.model_opt == "Sparse":
                p.error(f"--scheme={scheme}: only with --model_opt=FP8")
            try:
                scheme_groups(scheme)
            except ValueError as ex:
                p.error(str(ex))
    if not (Path(a.model_path) / "config.json").is_file():
        p.error(f"--model_path={a.model_path}: no HF checkpoint there; `make default` builds it")
    try:
        data = Dataset.load(Path(a.preprocessed_dir))
        # dataset order: the log's own order is completion order, short answers first
        log = iter_log_samples(a.accuracy_log, len(data))
        answers = {s.qsl_idx: s.token_ids.tolist() for s in log}
    except (DatasetMissingError, AccuracyInputError) as ex:
        p.error(str(ex))
    picked = sorted(answers)[: a.samples or None]
    logged = [(data.prompt(i), answers[i]) for i in picked]
    reference = AutoModelForCausalLM.from_pretrained(a.model_path, dtype=torch.float32).eval()
    layers = reference.config.num_hidden_layers
    eos = reference.config.eos_token_id
    widths = sorted({m.in_features for m in reference.modules() if isinstance(m, nn.Linear)})
    for scheme in schemes:
        group = scheme_groups(scheme)[0] if scheme.startswith("group") else 0
        if group and any(w % group for w in widths):
            p.error(f"--scheme={scheme}: {group} must divide the linears' input widths {widths}")
    for spec in a.dense_layers or ["0,-1"]:
        try:
            dense = dense_layers_from(spec, layers)
        except ValueError as ex:
            p.error(str(ex))
        for scheme in schemes:
            quantized = copy.deepcopy(reference)
            n = quantize_model(quantized, dense, a.model_opt == "Sparse", scheme)
            result = measure(reference, quantized, logged, eos)
            print(f"[fidelity] {a.model_opt} ({scheme}), dense layers {sorted(dense)} ({n} "
                  f"linears quantized): {result.line()}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
