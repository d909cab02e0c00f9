#!/usr/bin/env bash
# One short GPU lease in two calls, each under the 10-minute call limit: every gpu-profile
# speed measurement (python -m modaflow.benchmarks.gpu_speed), each part under its own time
# limit so that a slow part cannot starve the next. Usage, from the repo root on the GPU machine:
#   OUT=/some/dir bash benchmarks/gpu_lease.sh language   # <= 5 min: FLM step profile, every throughput variant
#   OUT=/some/dir bash benchmarks/gpu_lease.sh mri        # <= 5.5 min: MedForj UNet, stock vs compiled variants
#   OUT=/some/dir bash benchmarks/gpu_lease.sh mri_profile      # <= 2.5 min: where the compiled UNet step's time goes
#   OUT=/some/dir bash benchmarks/gpu_lease.sh mri_candidates   # <= 8 min: not yet measured variants (finest-level
#                                                               #   checkpointing, batch 2) vs stock
#   OUT=/some/dir bash benchmarks/gpu_lease.sh tests      # ~1 min: CUDA tests, the captured samplers (48 s on an H200)
#   OUT=/some/dir BENCH_TIMEOUT=570 bash benchmarks/gpu_lease.sh fmri   # ~9 min: modaflow bench fmri --profile gpu (H200:
#                                                         #   NeuroFlow 329 s, each further 15k-step flow 65 s; a call to itself)
#   OUT=/some/dir bash benchmarks/gpu_lease.sh mri_bench  # <= 9 min: modaflow bench mri --profile gpu (never run yet;
#                                                         #   likely more than one call: rerun at once to resume)
# Wheels in .whl/ (modaflow itself, monai, nibabel, nilearn; built here by benchmarks/gpu_wheels.sh and
# carried as ".whl") are installed to /tmp/site first when present (a bare machine with torch but without
# the imaging libraries).
# A lease has 15 minutes of device time in all, the machine's start included, and each call at most 10:
# not every stage fits one lease. Still to measure, by what they decide: the whole fmri gpu profile (its
# one-direction flows were cut short on the third lease), mri (issue 9's time and memory goals; mri_candidates
# for the variants not yet tried), mri_bench. The CUDA tests all passed on the third lease (H200).
set -u -o pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:?set OUT to the results folder}
STAGE=${1:?stage: language, mri, mri_profile, mri_candidates, mri_bench, tests, toy or fmri}
if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/site/modaflow ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, monai, modaflow.core; print('torch', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available())" || exit 1
# Every variant is printed as it finishes (compiled ones take minutes to compile on a bare
# machine), so a part cut short by its limit keeps its numbers in the log.
run_part() {  # name, seconds
  timeout "$2" python3 -m modaflow.benchmarks.gpu_speed --out "$OUT/$1" --parts "$1" > "$OUT/$1.log" 2>&1
  echo "== $1: exit $?"
  grep -E "^\[gpu_speed\]|ratio|rror|failed" "$OUT/$1.log" | cut -c1-400 | head -40
}
# BENCH_TIMEOUT and TESTS_TIMEOUT (seconds; default 540 and 150) shorten a stage so that two fit one call.
# A modality's benchmark at $PROFILE (gpu; PROFILE=smoke tries this script's plumbing on a CPU machine). The
# run folder lies outside $OUT (emptied before every call), so a second call made at once, on the still warm
# machine, resumes the stages the first one finished; its results, report and log come back in $OUT.
run_bench() {  # modality
  local dir="/tmp/$1_$PROFILE"
  timeout "${BENCH_TIMEOUT:-540}" python3 -m modaflow.benchmarks.cli bench "$1" --profile "$PROFILE" --out "$dir" > "$OUT/$1_$PROFILE.log" 2>&1
  echo "== bench $1 --profile $PROFILE: exit $?"
  grep -E "goal|done in|rror" "$OUT/$1_$PROFILE.log" | cut -c1-200 | tail -30
  cp "$dir/results.json" "$dir/report.md" "$OUT/" 2>/dev/null; ls "$dir"
  # the trained weights and their JSON headers (files under 8 MB; the flows' checkpoints/, 69 MB for the fmri XFM
  # with its optimizer state, left out) in one tarball, so that GPU-trained stages (for fmri: visual AE, NeuroVAE,
  # readout) can be scored beside CPU-trained ones afterwards (a lease hands back at most 8 files, 16 MB each)
  (cd "$dir" && find . \( -name '*.safetensors' -o -name '*.json' \) -size -8M -not -path '*/checkpoints/*' -print0) |
    tar czf "$OUT/$1_$PROFILE.weights.tgz" -C "$dir" --null -T - && du -h "$OUT/$1_$PROFILE.weights.tgz"
}
PROFILE=${PROFILE:-gpu}
case "$STAGE" in
  language) run_part language_profile 60; run_part language 240 ;;
  mri) run_part mri 320 ;;
  mri_profile) run_part mri_profile 150 ;;
  mri_candidates) run_part mri_candidates 480 ;;
  toy) run_part toy 120 ;;
  fmri) run_bench fmri ;;
  mri_bench) run_bench mri ;;
  tests) timeout "${TESTS_TIMEOUT:-150}" python3 -m pytest -q -m gpu -p no:cacheprovider tests/core/test_graph.py tests/benchmarks/test_gpu_speed.py tests/modalities/test_mri_recipe.py tests/modalities/test_timeseries_model.py tests/modalities/test_fmri.py tests/modalities/test_language_recipe.py tests/modalities/test_ephys_model.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -3 ;;
  *) echo "unknown stage $STAGE (language, mri, mri_profile, mri_candidates, mri_bench, tests, toy, fmri)"; exit 2 ;;
esac
