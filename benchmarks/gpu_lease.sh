#!/usr/bin/env bash
# One short GPU lease (about 10 minutes): the CUDA tests and every gpu-profile speed
# measurement (python -m modaflow.benchmarks.gpu_speed), each part under its own time limit
# so that a slow part cannot starve the next. Usage, from the repo root on the GPU machine:
#   OUT=/some/dir bash benchmarks/gpu_lease.sh
# Wheels in .whl/ (modaflow itself, monai, nibabel, nilearn) are installed to /tmp/site first
# when present (a bare machine with torch but without the imaging libraries).
set -u -o pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:?set OUT to the results folder}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, monai, modaflow.core; print('torch', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available())" || exit 1
timeout 50 python3 -m pytest -q -m gpu -p no:cacheprovider tests/core/test_graph.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -3
for part in toy:45 language:230 mri:240; do
  name=${part%%:*}
  timeout "${part##*:}" python3 -m modaflow.benchmarks.gpu_speed --out "$OUT/$name" --parts "$name" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? ($(grep -c '^| ' "$OUT/$name.log") table lines)"
  grep -E "ratio|tokens_per_s|s_per_volume|peak|_s \||error|failed|Error" "$OUT/$name.log" | grep -v warmup | head -40
done
