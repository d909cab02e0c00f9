"""The speed measurements of the ``gpu`` profiles, alone, in one short run: what needs CUDA
and fits a short GPU lease (the full ``gpu`` profiles also train models for hours).

Parts (each measured against its baseline in the same process, on the same inputs):

* ``toy``: the core's CUDA-graph captured and ``torch.compile``d samplers against the eager
  Euler loop (REFERENCE section 8; :func:`.solvers.solver_overhead`);
* ``language``: FLM training tokens/s at GPT-2-small size, V = 50 257, L = 128, batch 128,
  every :func:`.language_speed.variants` against the dense-input eager step (issue goal >= 2x);
* ``language_profile``: where the time of the low-rank eager FLM step goes (the operators by
  device time, :func:`.language_speed.profile_step`), to direct the work toward that goal;
* ``mri``: MedForj's UNet at 192x224x192, a training step and a sampling step of each
  :data:`modaflow.modalities.mri.gpu.VARIANTS` against stock MONAI (goal <= 0.3x time and
  memory; a volume in <= 1 s at 4 network evaluations);
* ``mri_profile``: where the time of the compiled channels-last training step goes (operators
  by device time), to direct the work toward the 0.3x time goal;
* ``mri_candidates``: the not yet measured :data:`modaflow.modalities.mri.gpu.CANDIDATES`
  (checkpointing the finest levels only, two volumes per step) against stock MONAI.

``--tiny`` runs the same code at tiny sizes on the CPU (the tests do). Results go to
``OUT/gpu_speed.json`` after every part (a run cut short keeps the finished parts) and a
table is printed at the end::

    python -m modaflow.benchmarks.gpu_speed --out runs/gpu-speed [--parts toy,language,mri]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from .harness import profile_calls, run_metadata
from .language_speed import SpeedSettings, SpeedVariant, profile_step, training_throughput
from .solvers import OverheadSettings, solver_overhead

__all__ = ["PARTS", "run_parts", "main"]

GPT2_SMALL = SpeedSettings(vocab=50_257, block_len=128, dim=768, depth=12, heads=12, batch=128, steps=20, warmup=5,
                           device="cuda")
TINY_LANGUAGE = SpeedSettings(vocab=300, block_len=16, dim=32, depth=1, heads=2, batch=4, steps=2, warmup=1)


def _say(part: str):
    def report(name: str, res) -> None:
        print(f"[gpu_speed] {part} {name}: {res}", flush=True)
    return report


def _toy(tiny: bool, compiled: bool) -> dict:
    s = OverheadSettings(dim=8, width=16, layers=2, batch=16, steps=5, repeats=2, gpu_batch=32) if tiny \
        else OverheadSettings(repeats=25)
    return solver_overhead(s, seed=0)


def _language(tiny: bool, compiled: bool) -> dict:
    return training_throughput(TINY_LANGUAGE if tiny else GPT2_SMALL, seed=0, compiled=compiled, report=_say("language"))


def _language_profile(tiny: bool, compiled: bool) -> dict:
    table = profile_step(TINY_LANGUAGE if tiny else GPT2_SMALL, SpeedVariant(fast_input=True, ce_chunk=0), seed=0)
    print(table, flush=True)
    return {"timings": {}, "notes": ["language_profile: the low-rank eager FLM step, operators by device time "
                                     "over 2 steps (the 'profile' entry of gpu_speed.json)"], "profile": table}


def _mri_sizes(tiny: bool):
    from modaflow.modalities.mri.models import UNetConfig

    device = torch.device("cpu" if tiny else "cuda")
    unet = UNetConfig(channels=(4, 8), attention_levels=(False, True), num_res_blocks=1, norm_num_groups=4) if tiny \
        else UNetConfig.medforj()
    return device, unet, ((8, 8, 8) if tiny else (192, 224, 192))


def _mri_compare(tiny: bool, compiled: bool, variants) -> dict:
    from modaflow.modalities.mri.gpu import compare_variants

    device, unet, shape = _mri_sizes(tiny)
    chosen = tuple(v for v in variants if compiled or not v.compile)
    res, metrics, baseline, notes = compare_variants(unet, shape, 2 if tiny else 5, device, allow_compile=not tiny,
                                                     variants=chosen, report=_say("mri"),
                                                     progress=lambda m: print(f"[gpu_speed] mri {m}", flush=True))
    timings = {f"mri.{name}.{key}": val for name, r in res.items() for key, val in vars(r).items()}
    metrics.update({f"stock_monai.{k}": v for k, v in baseline.items()})
    notes.append(f"mri: {shape}, UNet channels {unet.channels}; per volume, batch as named (1 otherwise); ratios vs "
                 f"stock MONAI (bf16 + flash attention, batch 1) in the same process")
    return {"timings": timings, "metrics": metrics, "notes": notes}


def _mri(tiny: bool, compiled: bool) -> dict:
    from modaflow.modalities.mri.gpu import VARIANTS

    return _mri_compare(tiny, compiled, VARIANTS)


def _mri_candidates(tiny: bool, compiled: bool) -> dict:
    from modaflow.modalities.mri.gpu import CANDIDATES

    return _mri_compare(tiny, compiled, CANDIDATES)


def _mri_profile(tiny: bool, compiled: bool) -> dict:
    from modaflow.modalities.mri.gpu import VARIANTS, make_steps

    device, unet, shape = _mri_sizes(tiny)
    v = next(v for v in VARIANTS if v.name == ("compile_cl" if compiled else "stock"))
    train_step, _, _ = make_steps(v, unet, shape, 1, device, allow_compile=not tiny)
    table = profile_calls(lambda k: train_step(), 2, 2, device.type == "cuda")
    print(table, flush=True)
    return {"timings": {}, "notes": [f"mri_profile: the {v.name} training step at {shape}, operators by device time "
                                     "over 2 steps (the 'profile' entry of gpu_speed.json)"], "profile": table}


PARTS: dict[str, Callable[[bool, bool], dict]] = {"toy": _toy, "language": _language,
                                                  "language_profile": _language_profile, "mri": _mri,
                                                  "mri_profile": _mri_profile, "mri_candidates": _mri_candidates}


def run_parts(parts: list[str], out_dir: str | Path, tiny: bool = False, compiled: bool = True) -> dict:
    """Run ``parts`` in order; returns (and writes after each part) ``{"meta", part: result or
    {"error": ...}}``. A failing part is recorded and the next one still runs."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"--parts: unknown part(s) {unknown}; expected some of {sorted(PARTS)}")
    if not tiny and not torch.cuda.is_available():
        raise RuntimeError("gpu_speed needs CUDA (use --tiny for the CPU check of the code path)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"meta": run_metadata(), "tiny": tiny}
    for name in parts:
        start = time.perf_counter()
        print(f"[gpu_speed] {name} ...", flush=True)
        try:
            results[name] = PARTS[name](tiny, compiled)
        except Exception as e:
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        results[name]["part_s"] = time.perf_counter() - start
        print(f"[gpu_speed] {name} done in {results[name]['part_s']:.0f} s", flush=True)
        (out / "gpu_speed.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def table(results: dict) -> str:
    """The numbers of ``results`` as ``part | key | value`` lines."""
    lines = ["| part | key | value |", "| --- | --- | --- |"]
    for part, res in results.items():
        if part in ("meta", "tiny"):
            continue
        for group in ("metrics", "timings"):
            for key, val in res.get(group, {}).items():
                lines.append(f"| {part} | {key} | {val:.4g} |" if isinstance(val, float) else f"| {part} | {key} | {val} |")
        for note in res.get("notes", []):
            lines.append(f"| {part} | note | {note} |")
        if "error" in res:
            lines.append(f"| {part} | error | {res['error']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modaflow.benchmarks.gpu_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_speed.json")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (checks the code path)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (their compilation takes minutes)")
    args = ap.parse_args(argv)
    try:
        results = run_parts([p for p in args.parts.split(",") if p], args.out, args.tiny, not args.no_compile)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(results))
    return 0 if all("error" not in r for k, r in results.items() if k not in ("meta", "tiny")) else 1


if __name__ == "__main__":
    sys.exit(main())
