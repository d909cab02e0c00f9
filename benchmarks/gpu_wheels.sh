#!/usr/bin/env bash
# Build .whl/ for a GPU lease (benchmarks/gpu_lease.sh installs it there): modaflow itself, built from
# this working tree, and the imaging libraries the device's image lacks (monai for mri; nibabel and
# nilearn for mri and fmri), each at the version installed here, so the lease runs what CI tested.
# Every other need of those stages (torch, lightning, numpy, scipy, scikit-learn, scikit-image, pandas,
# h5py, matplotlib, safetensors, einops, joblib, lxml, requests) is already on the device
# (../.library/device/KINDS.md). Run from the repo root, on a machine whose pip reaches a registry:
#   bash benchmarks/gpu_wheels.sh            # then: run(carry=[".whl"], command="OUT=$OUT bash benchmarks/gpu_lease.sh tests")
# The wheels are pure Python (py3-none-any), so they install on the device's Python 3.12 whatever
# this machine runs; the script refuses a binary one. .whl/ is ignored by git and stays well under
# the 64 MiB that a lease's working tree may carry (it prints the size).
set -euo pipefail
cd "$(dirname "$0")/.."
NAMES=(monai nibabel nilearn)
rm -rf .whl && mkdir .whl
python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl . >/dev/null
for name in "${NAMES[@]}"; do
  version=$(python3 -c "import importlib.metadata as m; print(m.version('$name'))") || {
    echo "gpu_wheels: $name is not installed here; install the project's extras first (pip install -e '.[all]')" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$name==$version"
done
for w in .whl/*.whl; do
  case "$w" in *-py3-none-any.whl|*-py2.py3-none-any.whl) ;; *) echo "gpu_wheels: $w is not pure Python" >&2; exit 1 ;; esac
done
ls .whl
du -sh .whl
