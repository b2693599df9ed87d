"""RUN_ARGS parsing: NVIDIA flag names, comma lists, --<config_key>=<value> overrides."""

import pytest

from harness.config.loader import ConfigError
from harness.run_args import DEFAULT_BENCHMARK, parse_run_args


def test_defaults_run_the_builtin_benchmark_offline():
    args = parse_run_args([])
    assert args.benchmarks == [DEFAULT_BENCHMARK]
    assert args.scenarios == ["Offline"]
    assert args.overrides == {}


def test_nvidia_style_flags():
    args = parse_run_args(
        "--benchmarks=llama2-70b --scenarios=Offline,Server --config_ver=high_accuracy "
        "--model_opt=Sparse --test_mode=AccuracyOnly --backend=torch --system_name=H100-SXM-80GBx1 "
        "--test_run --max_num_seqs=256 --dummy_weights --dtype bfloat16"
    )
    assert args.benchmarks == ["llama2-70b"]
    assert args.scenarios == ["Offline", "Server"]
    assert args.system_name == "H100-SXM-80GBx1"
    assert args.test_run
    assert args.overrides == {
        "run.config_ver": "high_accuracy",
        "engine.model_opt": "Sparse",
        "run.test_mode": "AccuracyOnly",
        "engine.backend": "torch",
        "max_num_seqs": "256",
        "dummy_weights": "true",
        "dtype": "bfloat16",
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        ("--scenarios=Offline,Streaming", "--scenarios=Streaming is not allowed"),
        ("--test_mode=Accuracy", "choose one of: PerformanceOnly, AccuracyOnly"),
        ("--model_opt=INT3", "--model_opt=INT3"),
        ("--config_ver=low", "default, high_accuracy"),
        ("stray", "unexpected argument 'stray'"),
    ],
)
def test_bad_run_args(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_run_args(argv)
