#!/usr/bin/env bash
# Fetch (here, where pip reaches PyPI) the wheels that the GPU machine lacks, into .whl/:
# tests/gpu/run_session.sh installs them there (carry: [".whl"]; .gitignore keeps them out).
# That machine has Python 3.12, torch, transformers, numpy, pandas, PyYAML, regex and tqdm, and
# no network. harness.accuracy (imported by the bench) needs nltk and rouge-score; omegaconf
# 2.4 needs no antlr (2.3's antlr 4.9 comes only as source). rouge-score too is source only:
# pip builds its (pure-Python) wheel here. nvidia-cutlass: only its C++ headers are used
# (kernels/sparse24_cutlass.py; installed without its dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl mlcommons-loadgen==6.0.17 omegaconf==2.4.0 \
  nltk click joblib absl-py nvidia-cutlass==4.2.0.0
python3 -m pip wheel -q --no-deps -w .whl rouge-score==0.1.2
ls -l .whl
