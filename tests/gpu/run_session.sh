#!/usr/bin/env bash
# One device-tool call: install carried wheels (scripts/device_wheels.sh fetches them), then the
# phases named in $@ (see docs/benchmarks.md).
#   tests  : pytest tests/gpu            b7     : llama2-7b SingleStream + Offline
#   pt:FILES : pytest on those files (commas between them)
#   ss7    : llama2-7b SingleStream, 64 queries (early stopping's minimum)
#   b70    : llama2-70b FP8 Offline      b70s   : llama2-70b Sparse Offline
#   b70srv : 70B FP8 Offline + Server at 0.85x   prof70 / prof7 : profile_step top kernels
#   prof70u / prof7u : the same profiles with torch ops instead of the fused Triton kernels
#   cap70  : 70B FP8 CUDA-graph capture only: each decode and mixed graph's replay time (~25 s)
#   o7     : llama2-7b Offline, Q7 queries   srv70 / int70 : 70B Server / Interactive at QPS70 / QPSI (the YAML's rate if unset)
#   sweep  : FP8 GEMM up to M=512, cuBLAS vs Triton configs (sweep:--sparse: compressed 2:4;
#            sweep:--sparse,--mma: and the sparse-MMA kernel, Triton at its current config)
#   gemv   : bf16 GEMV sweep, one decode row on the 7B's shapes (gemv:--m=2)
#   sparse : .carry/probe_sparse.py if carried
#   dk     : decode_kernel_bench, paged decode kernel variants (dk:--context=N,--part=unequal)
#   host   : host_step, a decode step's host bookkeeping at 1 / 64 / 512 sequences (cuda)
#   cbuild : build the engine's CUTLASS 2:4 variant in the background (one nvcc) while later
#            phases run (cbuild:all: every variant, for the sweep and tests); $OUT/cutlass_build.log
#   base   : copy the files under .carry/base/ (carried) over the tree (each replaced file kept
#            as FILE.~1~), so that later phases of the call run them: a same-call baseline for
#            a code change, e.g.
#            git show REV:harness/engine/kernels/paged_attention.py > .carry/base/harness/...
# A phase may carry extra bench flags after a colon, commas for spaces, e.g.
#   o7:--max_num_seqs=256,--admission_batch=32   (o7, ss7, b70, b70s, srv70, int70, prof70, prof7,
#   sweep, gemv; a flag whose value has commas, e.g. --config=..., must run directly)
set -u
export PYTHONUNBUFFERED=1
for spec in "$@"; do  # a misspelt phase or test file fails now, not after the device time
  phase=${spec%%:*}
  case $phase in
    tests|pt|gate|b7|ss7|b70|b70s|b70srv|prof70|prof70u|cap70|srv70|int70|o7|sweep|gemv|sparse|dk|base|host|prof7|prof7u|cbuild) ;;
    *) echo "run_session: unknown phase '$phase' in '$spec'"; exit 3 ;;
  esac
  if [ "$phase" = pt ]; then
    files=${spec#*:}
    for f in ${files//,/ }; do  # flags pass (-kEXPR, one word); file::test checks the file
      [[ $f == -* || -e ${f%%::*} ]] || { echo "run_session: no test file $f ($spec)"; exit 3; }
    done
  fi
done
ls .whl/*.whl > /dev/null 2>&1 || {
  echo "run_session: no wheels in .whl/; run scripts/device_wheels.sh here, carry .whl"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import mlperf_loadgen, harness.bench, harness.accuracy" || {
  echo "run_session: cannot import (above); run scripts/device_wheels.sh here, carry .whl"
  exit 1; }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/gpu.txt"
# SM clock, power and temperature every second of the call: do long runs throttle?
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu \
  --format=csv -l 1 > "$OUT/clocks.csv" 2>&1 &
SAMPLER=$!
SHORT="--min_duration_ms=10000 --target_qps=1"
for spec in "$@"; do
  phase=${spec%%:*}; flags=""; [[ $spec == *:* ]] && flags=${spec#*:}; flags=${flags//,/ }
  echo "=== phase $spec $(date +%T)"
  case $phase in
    tests) timeout 240 python3 -m pytest -q --tb=line tests/gpu 2>&1 | tail -60 ;;
    pt) timeout ${TPT:-200} python3 -m pytest -q --tb=line $flags 2>&1 | tail -60 ;;
    gate) timeout 150 python3 -m pytest -q -x tests/gpu/test_varlen_prefill.py \
          tests/gpu/test_cuda_graph.py tests/gpu/test_fp8_gemm.py \
          || { echo "gate failed: later phases not run"; exit 3; } ;;
    b7) timeout 100 python3 -m harness bench --benchmarks=llama2-7b-synthetic \
          --scenarios=SingleStream --min_duration_ms=10000 --min_query_count=8 ;
        timeout 200 python3 -m harness bench --benchmarks=llama2-7b-synthetic \
          --scenarios=Offline --min_duration_ms=10000 --min_query_count=1024 --target_qps=1 ;;
    ss7) timeout ${TSS7:-240} python3 -m harness bench --benchmarks=llama2-7b-synthetic \
          --scenarios=SingleStream --min_duration_ms=10000 --min_query_count=64 $flags ;;
    b70) timeout ${T70:-330} python3 -m harness bench --benchmarks=llama2-70b-synthetic $SHORT \
          --min_query_count=${Q70:-512} ${EXTRA70:-} $flags ;;
    b70s) timeout ${T70S:-300} python3 -m harness bench --benchmarks=llama2-70b-synthetic \
          --model_opts=Sparse $SHORT --min_query_count=${Q70:-512} $flags ;;
    b70srv) timeout 500 python3 -m harness bench --benchmarks=llama2-70b-synthetic \
          --scenarios=Offline,Server --server_fraction=0.85 --min_duration_ms=60000 \
          --min_query_count=${Q70:-512} ;;
    prof70|prof70u) timeout ${TP70:-200} python3 -m harness.report.profile_step --preset=llama2-70b \
          --model_opt=FP8 --kv_cache_dtype=fp8 --batch=${B70:-160} --prefill_prompts=16 \
          $([ $phase = prof70u ] && echo --no_fused) $flags ;;
    cap70) timeout 120 python3 -m harness.report.profile_step --preset=llama2-70b --model_opt=FP8 \
          --kv_cache_dtype=fp8 --batch=8 --graph_tokens=1024 --top=1 $flags 2>&1 \
          | grep -i "CUDA graphs\|\[profile\] llama" ;;
    srv70) qps=${QPS70:-}  # auto: SRVF (0.85) x the last Offline tokens/s of this call / 294 (mean output)
        [ "$qps" = auto ] && qps=$(cat build/logs/bench/latest/*/bench.json | python3 -c \
          "import json,sys; print(round(${SRVF:-0.85} * json.load(sys.stdin)['tokens_per_second'] / 294, 2))")
        timeout ${TS70:-300} python3 -m harness bench --benchmarks=llama2-70b-synthetic \
          --scenarios=Server --min_duration_ms=${DUR70:-90000} --min_query_count=100 \
          ${qps:+--target_qps=$qps} $flags ;;
    int70) # the config's min_query_count for early stopping (700; the H100 YAML 1,001): 350-500 s at 2.0 qps
        timeout ${TI70:-590} python3 -m harness bench --benchmarks=llama2-70b-synthetic \
          --scenarios=Interactive --min_duration_ms=${DURI:-60000} ${QPSI:+--target_qps=$QPSI} \
          $flags ;;
    o7) timeout ${T7:-200} python3 -m harness bench --benchmarks=llama2-7b-synthetic \
          --scenarios=Offline --min_duration_ms=10000 --min_query_count=${Q7:-2000} --target_qps=1 \
          ${EXTRA7:-} $flags ;;
    sweep) timeout ${TSW:-240} python3 -m harness.report.fp8_gemm_sweep --preset=llama2-70b $flags ;;
    gemv) timeout ${TGV:-300} python3 -m harness.report.gemv_sweep $flags ;;
    sparse) [ -f .carry/probe_sparse.py ] && timeout 200 python3 .carry/probe_sparse.py ;;
    dk) timeout ${TDK:-300} python3 -m harness.report.decode_kernel_bench $flags ;;
    cbuild) what=build; [ "$flags" = all ] && what=build_all
        python3 -c "import logging; logging.basicConfig(level=logging.INFO)
from harness.engine.kernels import sparse24_cutlass; sparse24_cutlass.$what()" \
          >> "$OUT/cutlass_build.log" 2>&1 &
        echo "building CUTLASS ($what) in the background: $OUT/cutlass_build.log" ;;
    base) [ -d .carry/base ] || { echo "base: no .carry/base (carry it)"; exit 3; }
          cp -rv --backup=numbered .carry/base/. . ;;  # a replaced file stays as FILE.~1~
    host) timeout 120 python3 -m harness.report.host_step --device=cuda --batch=1 --batch=64 \
          --batch=512 ;;
    prof7|prof7u) timeout 150 python3 -m harness.report.profile_step --preset=llama2-7b \
          --model_opt=Dense --batch=1 --batch=256 --prefill_prompts=16 \
          $([ $phase = prof7u ] && echo --no_fused) $flags ;;
  esac 2>&1 | tee -a "$OUT/session.log"
  [ "${PIPESTATUS[0]}" = 3 ] && break  # the gate or base failed
  case $phase in b7|b70|b70s|b70srv|o7|ss7|srv70|int70) cat build/logs/bench/latest/*/bench.json >> "$OUT/bench.jsonl" ;; esac
done
kill $SAMPLER 2>/dev/null
python3 - "$OUT/clocks.csv" <<'PY'  # the call's SM clock and power; and under load
import csv, statistics, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) == 4 and r[1].strip()[:1].isdigit()]
mhz = [float(r[1].split()[0]) for r in rows]
pairs = [(float(r[1].split()[0]), float(r[2].split()[0])) for r in rows
         if r[2].strip()[:1].isdigit()]  # (MHz, W) where the power was read
watts = [w for _, w in pairs]
if mhz:
    print(f"=== clocks: {len(mhz)} s sampled; SM {min(mhz):.0f} / {statistics.median(mhz):.0f} / "
          f"{max(mhz):.0f} MHz (min / median / max); power up to {max(watts, default=0):.0f} W")
busy = [(m, w) for m, w in pairs if w > 300]  # under load, not idle or loading
if busy:
    print(f"=== clocks under load (over 300 W): {len(busy)} s; SM median "
          f"{statistics.median(m for m, _ in busy):.0f} MHz at a median "
          f"{statistics.median(w for _, w in busy):.0f} W")
PY
tar czf "$OUT/summaries.tgz" build/logs/bench/*/*/mlperf_log_summary.txt \
  build/logs/bench/*/*/mlperf_log_detail.txt 2>/dev/null
echo "=== done $(date +%T)"
