"""Why one-step FMLM loses entropy (``python -m benchmarks.language_fmlm_diag <bench out>``).

For the text runs of a language bench folder (``runs/text-flm``, ``text-fmlm``, ``text-ar``),
from the same noise draws (sampling seeds 0 and 1, 32 blocks each) it reports per sampler
(FLM@128, FLM@8, FMLM@1, FMLM@8): the final denoiser's mean top probability and per-position
entropy, the entropy of its position-averaged distribution, gen PPL / entropy / mean tokens
before the first ``<eos>`` of the argmax tokens and of a draw at temperature 1, and (FMLM) the
share of positions whose argmax token equals FLM@128's from the same noise. Only noise and the
validation blocks (the last 256 train blocks; their entropy is printed) are used, never the
test split. Findings (quick, seed 0) are in benchmarks/RESULTS.md.

``--sweep``: the last-step temperature rule (the issue's "temperature and top-p options for the
last step", chosen per sampler by a rule fixed in advance). For each sampler (FLM@8/32, FMLM@1/2/4/8)
the final logits are computed once on *calibration* noise (sampling seeds ``5000 + seed + 1000 i``,
never the benchmark's reported seeds), then drawn at each temperature of a grid (0 = argmax); the
rule picks, for every sampler alike, the temperature whose entropy (all generated ids, REFERENCE §3)
is closest to the validation blocks' entropy. It also reports each sampler's gen PPL at that
entropy (log gen PPL linear in entropy between the two neighbouring temperatures), i.e. the
comparison at matched entropy.
"""

from __future__ import annotations

import json
import sys

import torch

from modaflow.core.flow_maps import sample_flow_map
from modaflow.core.ode import solve_ode
from modaflow.modalities.language.evaluator import token_nll
from modaflow.modalities.language.flm import flm_gamma_grid, flm_velocity, pick_tokens
from modaflow.modalities.language.metrics import first_eos_mask, gen_ppl, sample_entropy
from modaflow.modalities.language.recipe import prepare, restore
from modaflow.modalities.language.tokenizer import EOS

SAMPLERS = (("flm", 128), ("flm", 8), ("fmlm", 1), ("fmlm", 8))


SWEEP_SAMPLERS = (("flm", 8), ("flm", 32), ("fmlm", 1), ("fmlm", 2), ("fmlm", 4), ("fmlm", 8))
SWEEP_TEMPERATURES = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)


def _score(ev, x: torch.Tensor) -> dict:
    m = first_eos_mask(x, EOS)
    return {"gen_ppl": round(gen_ppl(token_nll(ev, x), m), 1), "entropy": round(sample_entropy(x), 3),
            "entropy_prefix": round(sample_entropy(x, m), 3), "prefix_len": round(float(m.sum(1).float().mean()), 1)}


def closest_entropy_temperature(curve: list[tuple[float, float, float]], target: float) -> tuple[float, float, float]:
    """The rule of ``--sweep`` (:func:`.language.closest_entropy`, the benchmark's) on ``(temperature, entropy,
    gen PPL)`` points: the point whose entropy is closest to ``target`` (ties: the lower temperature)."""
    from .language import closest_entropy

    temp = closest_entropy({c[0]: c[1] for c in curve}, target)
    return next(c for c in curve if c[0] == temp)


def _final_logits(flm, fmap, name: str, steps: int, x: torch.Tensor) -> torch.Tensor:
    """The last network call's logits of sampler ``name`` at ``steps`` from the noise ``x`` (the
    tokens are their argmax, or a draw by :func:`~modaflow.modalities.language.flm.pick_tokens`)."""
    grid = flm_gamma_grid(flm, steps, "cpu")
    if steps > 1:
        x = (solve_ode(flm_velocity(flm), x, grid[:-1], method="euler").x if name == "flm"
             else sample_flow_map(fmap, x, grid[:-1]).x)
    ones = torch.ones(x.shape[0])
    return (flm(x, grid[-2] * ones) if name == "flm" else fmap.net.dit(x, grid[-2] * ones, grid[-1] * ones)).float()


@torch.no_grad()
def sweep(run: str, seed: int = 0, n: int = 32, draws: int = 4, temperatures: tuple[float, ...] = SWEEP_TEMPERATURES) -> dict:
    """The ``--sweep`` report of the bench folder ``run`` (see the module docstring)."""
    from .language_report import interpolate_at_entropy

    cfg, tok, flm = restore(f"{run}/runs/text-flm")
    fmap = restore(f"{run}/runs/text-fmlm")[2]
    ev = restore(f"{run}/runs/text-ar")[2].eval()
    val = prepare(cfg, tok)[1][-256:]
    target = sample_entropy(val)
    out = {"val_entropy": round(target, 3)}
    seeds = [5000 + seed + 1000 * i for i in range(draws)]
    for name, steps in SWEEP_SAMPLERS:
        logits = [_final_logits(flm, fmap, name, steps, torch.randn(n, cfg.block_len, cfg.vocab, generator=torch.Generator().manual_seed(s)))
                  for s in seeds]
        curve = []
        for temp in temperatures:
            x = torch.cat([pick_tokens(lg, temp, 1.0, torch.Generator().manual_seed(s + 1)) for lg, s in zip(logits, seeds)])
            r = _score(ev, x)
            curve.append((temp, r["entropy"], r["gen_ppl"]))
        out[f"{name}@{steps}"] = {"chosen": closest_entropy_temperature(curve, target), "curve": curve,
                                  "gen_ppl_at_val_entropy": round(interpolate_at_entropy([c[1:] for c in curve], target), 1)}
    return out


@torch.no_grad()
def diagnose(run: str, n: int = 32) -> dict:
    cfg, tok, flm = restore(f"{run}/runs/text-flm")
    fmap = restore(f"{run}/runs/text-fmlm")[2]
    ev = restore(f"{run}/runs/text-ar")[2].eval()
    flm.eval(), fmap.eval()
    dit = fmap.net.dit
    val = prepare(cfg, tok)[1][-256:]
    out = {"val_data": {"entropy": round(sample_entropy(val), 3), "entropy_prefix": round(sample_entropy(val, first_eos_mask(val, EOS)), 3),
                        "prefix_len": round(float(first_eos_mask(val, EOS).sum(1).float().mean()), 1)}}
    for seed in (0, 1):
        x0 = torch.randn(n, cfg.block_len, cfg.vocab, generator=torch.Generator().manual_seed(seed))
        ref = None
        for name, steps in SAMPLERS:
            grid = flm_gamma_grid(flm, steps, "cpu")
            x = x0
            if steps > 1:
                x = (solve_ode(flm_velocity(flm), x, grid[:-1], method="euler").x if name == "flm"
                     else sample_flow_map(fmap, x, grid[:-1]).x)
            ones = torch.ones(n)
            logits = (flm(x, grid[-2] * ones) if name == "flm" else dit(x, grid[-2] * ones, grid[-1] * ones)).float()
            p = torch.softmax(logits, -1)
            pbar = p.mean(1)
            u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed + 1)).clamp_(1e-12, 1 - 1e-7)
            argmax = logits.argmax(-1)
            row = {"top_p": round(float(p.max(-1).values.mean()), 3),
                   "position_entropy": round(float(-torch.xlogy(p, p).sum(-1).mean()), 3),
                   "averaged_entropy": round(float(-torch.xlogy(pbar, pbar).sum(-1).mean()), 3),
                   "argmax": _score(ev, argmax), "t1": _score(ev, (torch.log_softmax(logits, -1) - torch.log(-torch.log(u))).argmax(-1))}
            if ref is None:
                ref = argmax
            else:
                row["agree_flm128"] = round(float((argmax == ref).float().mean()), 3)
            out[f"{name}@{steps}/seed{seed}"] = row
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    if "--sweep" in sys.argv:  # python -m modaflow.benchmarks.language_fmlm_diag <bench out> --sweep [seed]
        args = [a for a in sys.argv[1:] if a != "--sweep"]
        result = sweep(args[0], int(args[1]) if len(args) > 1 else 0)
    else:
        result = diagnose(sys.argv[1])
    for k, v in result.items():
        print(k, json.dumps(v))
