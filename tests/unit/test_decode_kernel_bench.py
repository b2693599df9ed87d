"""report/decode_kernel_bench: bad arguments and a machine without CUDA stop it at once."""

from __future__ import annotations

import pytest
import torch

from harness.report.decode_kernel_bench import main


@pytest.mark.parametrize("argv", [["--context=0"], ["--cache_blocks=-1"]])
def test_bad_sizes_are_refused_naming_the_value(argv, capsys):
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_an_unknown_part_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["--part=fast"])
    assert ex.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_says_where_to_run(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "needs a CUDA GPU" in capsys.readouterr().err
