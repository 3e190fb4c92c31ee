#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), repository root, after scripts/gpu_prepare.sh here:
#   run: command "bash scripts/gpu_session.sh", carry [".gpu"], timeout_s 580
# Installs the carried wheels, then runs scripts/gpu_check.py (CUDA vs CPU fp32 vs the parity
# kit) and scripts/gpu_bench.py (the benchmark tables, gpu_bench.json), each under its own time
# limit so that both report inside one call of at most 10 minutes. Logs and JSON go to $OUT.
#
# GPU_SESSION_SMOKE=1 runs the same sequence on a CPU in about a minute (tiny sizes), to check
# this script where there is no GPU; PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site \
    .gpu/whl/*.whl || { echo "gpu_session: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="backend${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ -d .gpu/parity ] && export CHANGECLIP_PARITY_DIR="${CHANGECLIP_PARITY_DIR:-$PWD/.gpu/parity}"
if [ "${GPU_SESSION_SMOKE:-0}" = 1 ]; then
  check_args=(--device cpu --variants rn50 --size 64 --batch 1)
  bench_args=(--smoke)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
  check_args=()
  bench_args=(--budget-s 300)
fi
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)" \
  2>&1 | tee "$OUT/versions.txt"
status=0
timeout 170 "$PY" scripts/gpu_check.py "${check_args[@]}" > "$OUT/gpu_check.txt" 2>&1 || status=$?
echo "gpu_check exit $status"
tail -n 12 "$OUT/gpu_check.txt"
bench_status=0
timeout 380 "$PY" scripts/gpu_bench.py --out "$OUT" "${bench_args[@]}" > "$OUT/gpu_bench.txt" 2>&1 || bench_status=$?
echo "gpu_bench exit $bench_status"
tail -n 60 "$OUT/gpu_bench.txt"
[ "$status" = 0 ] && [ "$bench_status" = 0 ]
