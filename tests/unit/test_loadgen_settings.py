"""user.conf generation and the hf backend's output trimming."""

from harness.backends.hf import trim_output
from harness.config.loader import load_config
from harness.loadgen.settings import loadgen_model_name, user_conf_text


def test_user_conf_for_llama2_keeps_mlperf_conf_rules():
    cfg = load_config("llama2-70b", "Offline", "H100-SXM-80GBx1")
    text = user_conf_text(cfg, 24576)
    assert "llama2-70b.Offline.target_qps = 10.0" in text
    assert "llama2-70b.Offline.performance_sample_count_override = 24576" in text
    assert "llama2-70b.Offline.sample_concatenate_permutation = 1" in text
    # min_duration / min_query_count / latencies are left to LoadGen's built-in mlperf.conf
    assert "min_duration" not in text and "min_query_count" not in text
    assert "ttft_latency" not in text


def test_user_conf_for_test_run_and_interactive():
    cfg = load_config("llama2-70b", "Interactive", "H100-SXM-80GBx1", test_run=True)
    assert loadgen_model_name(cfg) == "llama2-70b-interactive"
    text = user_conf_text(cfg, 24576)
    assert "llama2-70b-interactive.Server.min_duration = 60000" in text
    assert "llama2-70b-interactive.Server.min_query_count = 64" in text
    assert "llama2-70b-interactive.Server.sample_concatenate_permutation = 0" in text


def test_user_conf_for_default_sets_its_own_latency_limits():
    cfg = load_config("smollm2-135m", "Server", "cpu-default")
    text = user_conf_text(cfg, 400)
    assert "smollm2-135m.Server.ttft_latency = 10000" in text
    assert "smollm2-135m.Server.tpot_latency = 1000" in text
    assert "smollm2-135m.Server.target_latency_percentile = 90.0" in text
    assert "smollm2-135m.Server.use_token_latencies = 1" in text


def test_trim_output_keeps_one_eos_and_no_padding():
    assert trim_output([5, 6, 2, 2, 2], eos_token_id=2) == [5, 6, 2]
    assert trim_output([5, 6, 7], eos_token_id=2) == [5, 6, 7]
    assert trim_output([5, 2, 7], eos_token_id=None) == [5, 2, 7]


def test_run_info_records_the_layers_fp8_left_dense(tmp_path):
    import json

    from harness.config.loader import load_config
    from harness.loadgen.runner import write_run_files

    for opt, want in (("FP8", "0,-1"), ("Dense", None)):  # the default's config sets "0,-1"
        cfg = load_config("smollm2-135m", "Offline", "cpu-default", {"model_opt": opt})
        write_run_files(cfg, tmp_path / opt, "test", num_samples=4)
        info = json.loads((tmp_path / opt / "run_info.json").read_text())
        assert info.get("fp8_dense_layers") == want
