#!/usr/bin/env bash
# One short GPU lease in two calls (each under the 10-minute call limit): the CUDA tests and
# every gpu-profile speed measurement (python -m modaflow.benchmarks.gpu_speed), each part
# under its own time limit so that a slow part cannot starve the next. Usage, from the repo
# root on the GPU machine:
#   OUT=/some/dir bash benchmarks/gpu_lease.sh eager      # ~3 min: CUDA tests, eager variants
#   OUT=/some/dir bash benchmarks/gpu_lease.sh compiled   # ~10 min: torch.compile variants
# Wheels in .whl/ (modaflow itself, monai, nibabel, nilearn) are installed to /tmp/site first
# when present (a bare machine with torch but without the imaging libraries).
set -u -o pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:?set OUT to the results folder}
STAGE=${1:?stage: eager or compiled}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, monai, modaflow.core; print('torch', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available())" || exit 1
[ "$STAGE" = eager ] && timeout 50 python3 -m pytest -q -m gpu -p no:cacheprovider tests/core/test_graph.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -3
# Eager variants first (about a minute, no compilation), then the compiled ones, which take
# minutes to compile on a bare machine (first H100 lease: none of them finished in 230-240 s
# per part). Every variant is printed as it finishes, so a part cut short keeps its numbers.
run_part() {  # name, seconds, extra flags
  timeout "$2" python3 -m modaflow.benchmarks.gpu_speed --out "$OUT/$1$3" --parts "$1" $3 > "$OUT/$1$3.log" 2>&1
  echo "== $1 $3: exit $?"
  grep -E "^\[gpu_speed\]|ratio|error|failed|Error" "$OUT/$1$3.log" | head -40
}
if [ "$STAGE" = eager ]; then
  run_part language 60 --no-compile
  run_part mri 40 --no-compile
else
  run_part language 220 ""
  run_part mri 290 ""
  run_part toy 70 ""
fi
