"""fp8_fidelity: FP8 copies of a tiny random HF Llama, scored on the fp32 model's own answers."""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness.engine.quant.fp8 import FP8LinearMethod
from harness.report.fp8_fidelity import FP8Linear, measure, quantize_model
from tests.unit.test_engine_vs_hf import tiny_hf_model


def greedy(model: nn.Module, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_decoder_linears_outside_the_dense_layers_become_fp8_and_the_head_stays():
    model = tiny_hf_model(num_hidden_layers=3)
    assert quantize_model(model, frozenset({1}), sparse24=False) == 2 * 7  # q k v o gate up down
    assert isinstance(model.model.layers[0].self_attn.q_proj, FP8Linear)
    assert isinstance(model.model.layers[2].mlp.down_proj, FP8Linear)
    assert type(model.model.layers[1].mlp.down_proj) is nn.Linear
    assert type(model.lm_head) is nn.Linear


def test_an_fp8_linear_is_close_to_its_fp32_linear_but_not_equal():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=False)
    x = torch.randn(5, 64)
    exact, fp8 = linear(x), FP8Linear(linear, FP8LinearMethod())(x)
    error = ((fp8 - exact).norm() / exact.norm()).item()
    assert 0 < error < 0.1
    sparse = FP8Linear(linear, FP8LinearMethod(sparse24=True))
    assert (sparse.weight.float() == 0).float().mean() >= 0.5  # 2 of every 4 pruned


def test_the_models_own_greedy_answers_score_no_flips_and_the_same_likelihood():
    model = tiny_hf_model()
    prompts = [[1, 5, 9], [1, 7], [1, 3, 4, 8]]
    samples = [(p, greedy(model, p, 6)) for p in prompts]
    eos = samples[0][1][-1]  # the first answer "ends with EOS"
    same = measure(model, copy.deepcopy(model), samples, eos_token_id=eos)
    assert same.answers == 3 and same.positions == 18
    assert same.flips == same.reference_flips == 0 and same.whole_answers == 3
    assert same.eos_ends >= 1 and same.eos_kept == same.eos_ends
    assert abs(same.nll_quantized - same.nll_reference) < 1e-4
    quantized = copy.deepcopy(model)
    quantize_model(quantized, frozenset(), sparse24=True)  # 2:4 pruning changes the model
    pruned = measure(model, quantized, samples, eos_token_id=eos)
    assert pruned.reference_flips == 0 and pruned.positions == 18
    assert pruned.nll_quantized > pruned.nll_reference  # the fp32 answers are less likely


def test_a_missing_log_or_checkpoint_is_a_one_line_error(tmp_path, capsys):
    import numpy as np
    import pytest

    from harness.report.fp8_fidelity import main

    for name, values in (("input_ids_padded", [[1, 2]]), ("input_lens", [2]), ("output_lens", [3])):
        np.save(tmp_path / f"{name}.npy", np.array(values, dtype=np.int32))
    (tmp_path / "config.json").write_text("{}")
    args = [f"--preprocessed_dir={tmp_path}", f"--model_path={tmp_path}"]
    with pytest.raises(SystemExit):
        main([*args, f"--accuracy_log={tmp_path}/none.json"])
    assert "none.json: accuracy log not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args[:1], f"--model_path={tmp_path}/no_model", "--accuracy_log=x"])
    assert "no HF checkpoint there" in capsys.readouterr().err


def test_the_simulated_per_row_scheme_is_the_engines_fp8_linear():
    from harness.report.fp8_fidelity import SimulatedFP8Linear

    torch.manual_seed(1)
    linear = nn.Linear(64, 32, bias=False)
    x = torch.randn(5, 64)
    engine = FP8Linear(linear, FP8LinearMethod())(x)
    torch.testing.assert_close(SimulatedFP8Linear(linear, 0, 0)(x), engine)
    weights_only = SimulatedFP8Linear(linear, 0, None)(x)
    assert not torch.equal(weights_only, engine) and not torch.equal(weights_only, linear(x))


def test_smaller_groups_round_small_values_next_to_an_outlier_closer():
    from harness.report.fp8_fidelity import round_trip_fp8

    x = torch.full((1, 64), 0.011)
    x[0, 0] = 1000.0  # one scale for the row: 0.011 / (1000 / 448) falls among e4m3's subnormals
    row, grouped = round_trip_fp8(x, 0), round_trip_fp8(x, 32)
    assert row[0, 0] == grouped[0, 0] == 1000.0
    assert (grouped[0, 32:] - 0.011).abs().max() < (row[0, 32:] - 0.011).abs().max()


def test_a_bad_scheme_is_a_one_line_error_naming_it(tmp_path, capsys):
    import pytest

    from harness.report.fp8_fidelity import main, scheme_groups

    assert scheme_groups("weights") == (0, None) and scheme_groups("group32") == (32, 32)
    cases = [(["--scheme=group0"], "--scheme=group0"),
             (["--scheme=weights", "--model_opt=Sparse"], "only with --model_opt=FP8")]  # fmt: skip
    for argv, named in cases:
        with pytest.raises(SystemExit):
            main([*argv, "--accuracy_log=x", f"--model_path={tmp_path}"])
        assert named in capsys.readouterr().err


def test_a_group_that_does_not_divide_the_models_widths_is_refused_before_scoring(tmp_path, capsys):
    import json

    import numpy as np
    import pytest

    from harness.report.fp8_fidelity import main

    tiny_hf_model().save_pretrained(tmp_path / "model")  # linears 64 and 96 wide
    for name, values in (("input_ids_padded", [[1, 2]]), ("input_lens", [2]), ("output_lens", [3])):
        np.save(tmp_path / f"{name}.npy", np.array(values, dtype=np.int32))
    log = tmp_path / "log.json"
    data = np.asarray([5, 6, 2], dtype="<i4").tobytes().hex().upper()
    log.write_text(json.dumps([{"seq_id": 0, "qsl_idx": 0, "data": data}]))
    args = [f"--preprocessed_dir={tmp_path}", f"--model_path={tmp_path / 'model'}",
            f"--accuracy_log={log}", "--samples=1"]  # fmt: skip
    with pytest.raises(SystemExit):
        main([*args, "--scheme=group64"])
    assert "--scheme=group64: 64 must divide the linears' input widths [64, 96]" in (
        capsys.readouterr().err
    )
    assert main([*args, "--scheme=group32"]) == 0  # 32 divides both: it scores
    assert "FP8 (group32)" in capsys.readouterr().out
