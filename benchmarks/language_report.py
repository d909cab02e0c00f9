"""Assembling the language benchmark's result: metrics (FMLM, the method), baselines (FLM,
MDLM, reference lines, the exact tier), goal ratios, metric-vs-NFE curves and plots, and the
Markdown tables and sample text appended to ``report.md``."""

from __future__ import annotations

import math
from pathlib import Path

from . import report as R
from .harness import BenchResult

__all__ = ["assemble", "PUBLISHED", "interpolate_at_entropy"]

PUBLISHED = {
    "FLM LM1B (GPT-2-Large evaluator), gen PPL / entropy": {8: (243.4, 2.41), 32: (152.0, 4.40), 128: (112.5, 4.34), 1024: (96.9, 4.29)},
    "FMLM LM1B, gen PPL / entropy": {1: (119.3, 4.16), 2: (110.2, 4.21), 4: (98.8, 4.21), 8: (86.3, 4.21)},
}
"""Published numbers (REFERENCE §3; LM1B, GPT-2-Large evaluator): not comparable to ours
(other data, evaluator and model size); shown beside them as published."""

_TEXT_METRICS = ("gen_ppl", "gen_ppl_spread", "entropy", "entropy_spread", "entropy_prefix", "js_2gram", "js_4gram", "self_bleu",
                 "samples_per_s", "prefix_len")
_MARKOV_METRICS = ("true_nll", "entropy", "samples_per_s")


def _split(rows: dict, prefix: str) -> tuple[dict, dict]:
    metrics, baselines = {}, {}
    for (m, k), vals in rows.items():
        for name, v in vals.items():
            if m == "fmlm":
                metrics[f"{prefix}.fmlm.{name}@{k}"] = v
            else:
                baselines.setdefault(f"{prefix}.{m}", {})[f"{name}@{k}"] = v
    return metrics, baselines


def interpolate_at_entropy(points: list[tuple[float, float]], entropy: float) -> float:
    """Gen PPL at ``entropy`` on the curve through ``(entropy, gen PPL)`` points (sorted by
    entropy; log gen PPL linear in entropy between the two neighbours); NaN outside their
    range (no extrapolation: then the entropies are not matched)."""
    pts = sorted(points)
    for (h0, p0), (h1, p1) in zip(pts, pts[1:]):
        if h0 <= entropy <= h1:
            w = (entropy - h0) / (h1 - h0) if h1 > h0 else 0.0
            return math.exp((1 - w) * math.log(p0) + w * math.log(p1))
    return math.nan


def _goals(rows: dict, match_rows: dict, data_entropy: float, match_steps: int, data_entropy_prefix: float | None = None
           ) -> dict:
    g = {}
    if ("fmlm", 1) in rows and ("flm", 8) in rows:
        g["goal.fmlm1_over_flm8_gen_ppl_ratio"] = rows[("fmlm", 1)]["gen_ppl"] / rows[("flm", 8)]["gen_ppl"]
        g["goal.fmlm1_entropy_rel_gap"] = abs(rows[("fmlm", 1)]["entropy"] - data_entropy) / data_entropy
        if data_entropy_prefix is not None and "entropy_prefix" in rows[("fmlm", 1)]:
            # the same gap on the tokens up to the first <eos> (the definition used before 2026-11-26)
            g["goal.fmlm1_entropy_prefix_rel_gap"] = (abs(rows[("fmlm", 1)]["entropy_prefix"] - data_entropy_prefix)
                                                      / data_entropy_prefix)
    key = ("mdlm", match_steps)
    if ("fmlm", 4) in rows and key in rows:
        f4 = rows[("fmlm", 4)]
        g[f"goal.fmlm4_over_mdlm{match_steps}_gen_ppl_ratio"] = f4["gen_ppl"] / rows[key]["gen_ppl"]
        g[f"goal.fmlm4_minus_mdlm{match_steps}_entropy"] = f4["entropy"] - rows[key]["entropy"]
        # matched entropy: MDLM@match_steps at temperatures 1 and match_temperatures traces gen PPL vs entropy;
        # its gen PPL at FMLM@4's entropy (interpolated; NaN when outside the traced range)
        pts = [(v["entropy"], v["gen_ppl"]) for (m, k), v in {**rows, **match_rows}.items()
               if k == match_steps and (m == "mdlm" or m.startswith("mdlm-t"))]
        g[f"goal.fmlm4_over_mdlm{match_steps}_gen_ppl_at_matched_entropy"] = f4["gen_ppl"] / interpolate_at_entropy(pts, f4["entropy"])
    return g


def _curves(rows: dict, names: tuple[str, ...], prefix: str, ref: dict) -> dict:
    curves = {}
    methods = sorted({m for m, _ in rows})
    for name in names:
        series = {m: {"x": [k for (mm, k) in rows if mm == m], "y": [v[name] for (mm, k), v in rows.items() if mm == m]}
                  for m in methods}
        curves[f"{prefix}.{name}_vs_nfe"] = {"xlabel": "NFE (network calls)", "ylabel": name, "series": series,
                                             "reference": ref.get(name)}
    return curves


def _plot(out: Path, curves: dict) -> list[str]:
    files = []
    for key, c in curves.items():
        series = {m: (s["x"], s["y"]) for m, s in c["series"].items()}
        if c.get("reference") is not None:
            xs = sorted({x for s in c["series"].values() for x in s["x"]})
            series["reference (data / evaluator)"] = (xs, [c["reference"]] * len(xs))
        files.append(R.plot_curves(out / f"{key}.png", series, key, c["xlabel"], c["ylabel"]).name)
    return files


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _table(rows: dict, names: tuple[str, ...], ref: dict, ref_names: dict[str, str]) -> list[str]:
    lines = ["| method | steps (NFE) | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for (m, k), v in rows.items():
        lines.append(f"| {m.upper()} | {k} | " + " | ".join(_fmt(v[n]) for n in names) + " |")
    cells = [_fmt(ref[ref_names[n]]) if n in ref_names and ref_names[n] in ref else "" for n in names]
    lines.append("| reference (data / evaluator) | - | " + " | ".join(cells) + " |")
    return lines


def assemble(profile: str, p, seed: int, text: dict, markov: dict, speed: dict, out: Path) -> tuple[BenchResult, str]:
    """``(BenchResult, Markdown appended to report.md)``."""
    cal_rows = text.get("cal_rows", {})
    metrics, baselines = _split({**text["rows"], **text["match_rows"], **cal_rows}, "text")
    m2, b2 = _split(markov["rows"], "markov")
    metrics.update(m2)
    baselines.update(b2)
    metrics.update(_goals(text["rows"], text["match_rows"], text["ref"]["data_entropy"], p.match_steps,
                          text["ref"].get("data_entropy_prefix")))
    if cal_rows:  # the same goals with every sampler at its validation-calibrated last-step temperature
        cal = {(m[: -len("-cal")], k): v for (m, k), v in cal_rows.items()}
        metrics.update({k.replace("goal.", "goal.calibrated.", 1): v for k, v in _goals(
            cal, text["match_rows"] | {("mdlm", k): v for (m, k), v in text["rows"].items() if m == "mdlm"},
            text["ref"]["data_entropy"], p.match_steps).items()})
    baselines["text.reference"] = dict(text["ref"])
    baselines["markov.reference"] = dict(markov["ref"])
    baselines["published (LM1B, not comparable)"] = {
        f"{name.split(',')[0]}.gen_ppl@{k}": v[0] for name, d in PUBLISHED.items() for k, v in d.items()}
    timings = {**text["timings"], **markov["timings"], **speed["timings"]}
    text_ref = {"gen_ppl": text["ref"]["evaluator_test_ppl"], "entropy": text["ref"]["data_entropy"],
                "js_4gram": text["ref"]["data_js_4gram"], "self_bleu": text["ref"]["data_self_bleu"]}
    curves = _curves(text["rows"], ("gen_ppl", "entropy", "js_4gram", "self_bleu"), "text", text_ref)
    curves.update(_curves(markov["rows"], ("true_nll",), "markov", {"true_nll": markov["ref"]["expected_true_nll"]}))
    plots = _plot(out, curves)
    frontier = {}
    for (m, k), v in {**text["rows"], **text["match_rows"]}.items():
        name = "MDLM@%d (T = 1, %s)" % (p.match_steps, ", ".join(f"{t:g}" for t in p.match_temperatures)) \
            if k == p.match_steps and (m == "mdlm" or m.startswith("mdlm-t")) else m.upper()
        frontier.setdefault(name, []).append((v["entropy"], v["gen_ppl"]))
    series = {name: tuple(zip(*sorted(pts))) for name, pts in frontier.items()}
    series["data entropy"] = ([text["ref"]["data_entropy"]] * 2,
                              [min(v["gen_ppl"] for v in text["rows"].values()), max(v["gen_ppl"] for v in text["rows"].values())])
    plots.append(R.plot_curves(out / "text.gen_ppl_vs_entropy.png", series, "gen PPL vs entropy (all cells)",
                               "entropy (nats)", "gen PPL", log=False).name)
    losses = {**text["losses"], **markov["losses"]}
    plots.append(R.plot_loss(out / "loss.png", {k: v for k, v in losses.items() if v[0]}, "training loss").name)
    cfg = p.text
    notes = speed["notes"] + [
        f"text: Shakespeare split by work, {cfg.tokenizer} tokenizer (K = {text['vocab']}), L = {cfg.block_len}, "
        f"DiT d = {cfg.dim}, depth {cfg.depth}; FLM/MDLM {cfg.fm.max_steps} steps, FMLM {p.text_fmlm_steps} distillation "
        f"steps ({cfg.fmlm_loss}, objective {cfg.fmlm_objective}, lr {p.text_fmlm_lr_mult:.3g} x the FLM's) from the FLM, evaluator {p.ar_steps} steps; "
        f"{p.n_eval} samples per cell, seed {seed}",
        "gen PPL: exp of the token-weighted mean NLL under the in-suite causal LM, tokens after the first <eos> masked; "
        "entropy: per-sample unigram entropy (nats) of all generated token ids (REFERENCE §3); entropy_prefix: of the "
        "tokens before the first <eos> (prefix_len: their mean number); js_n: Jensen-Shannon (nats) of n-gram frequencies to held-out text",
        "FLM/FMLM take the argmax at the last step; MDLM draws at temperature 1 (carry-over unmasking)",
        f"rows <method>-cal and goal.calibrated.*: the last-step temperature of the FLM / FMLM cells {list(p.calibrate_cells)} (MDLM: at "
        f"{p.match_steps} steps, its temperature at every reveal) chosen from {list(p.calibrate_temperatures)} by one rule "
        "fixed in advance: the entropy on calibration draws (other sampling seeds) closest to the validation blocks' "
        "(the last train blocks; never the test split)",
        f"each cell pools {p.sample_seeds} sampling seeds of {p.n_eval // p.sample_seeds} samples; *_spread = half the range "
        "of the seeds' values (sampling spread only: the models are one training seed each)",
        f"matched entropy: MDLM@{p.match_steps} is also sampled at temperatures {list(p.match_temperatures)} (rows mdlm-t<T>); "
        f"goal.fmlm4_over_mdlm{p.match_steps}_gen_ppl_at_matched_entropy divides FMLM@4's gen PPL by MDLM's at FMLM@4's "
        "entropy, log gen PPL interpolated linearly in entropy between the two nearest MDLM points (NaN when FMLM@4's "
        "entropy is outside their range: not matched); text.gen_ppl_vs_entropy.png shows every cell",
        f"markov: V = {p.markov.markov_vocab}, L = {p.markov.block_len}; true_nll = the true chain's NLL per token",
        "published numbers are LM1B with a GPT-2-Large evaluator and a far larger model: shown as published, not comparable",
        "budget: FLM and MDLM get the same steps, batch and DiT; FLM learns context later (V = 64 Markov, L = 32, d = 64, "
        "depth 2, batch 32, lr 1e-3: its denoiser stays at the context-free per-token posterior through ~1000 steps, "
        "true NLL@32 11.4 vs MDLM 5.2, and starts using context by 2000 steps, 8.5): at CPU-profile budgets FLM rows "
        "measure an under-trained FLM, not the method; the Euler sampler itself reaches the data NLL with the exact "
        "Markov denoiser (tests/modalities/test_language_flm_oracle.py)",
        "FLM's training time t (reparameterized) is logit-normal(0, 1), MDLM's uniform (its NELBO): chosen on a "
        "validation split of the train blocks (benchmarks/language_flm_probe.py)",
        f"FLM's time table: {cfg.time_table} (the paper's one-hot table; a table for the embedded input's "
        "signal-to-noise ratio, d/K of the one-hot's, was worse on validation, see LanguageConfig.time_table)",
        f"FMLM: {cfg.fmlm_grid_fraction:g} of the off-diagonal (s, t) pairs on the 1/2/4/8-step sampler grids "
        "(validation choice, LanguageConfig.fmlm_grid_fraction)",
    ]
    result = BenchResult.create("language", profile, seed, metrics=metrics, baselines=baselines, timings=timings,
                                curves=curves, plots=plots, notes=notes)
    md = ["## Tables", "", "### Shakespeare (in-suite evaluator)", ""]
    md += _table({**text["rows"], **text["match_rows"]}, _TEXT_METRICS, text["ref"],
                 {"gen_ppl": "evaluator_test_ppl", "entropy": "data_entropy", "js_2gram": "data_js_2gram",
                  "js_4gram": "data_js_4gram", "self_bleu": "data_self_bleu"})
    if cal_rows:
        md += ["", f"### Last-step temperature chosen on validation (entropy closest to the validation blocks', "
                   f"{text['ref']['val_entropy']:.3f} nats; goal.calibrated.*)", ""]
        md += _table(cal_rows, ("temperature", *_TEXT_METRICS), text["ref"],
                     {"gen_ppl": "evaluator_test_ppl", "entropy": "data_entropy", "js_2gram": "data_js_2gram",
                      "js_4gram": "data_js_4gram", "self_bleu": "data_self_bleu"})
    md += ["", "### Exact tier: Markov chain (true NLL per token)", ""]
    md += _table(markov["rows"], _MARKOV_METRICS, markov["ref"], {"true_nll": "expected_true_nll", "entropy": "data_entropy"})
    md += ["", "### Published (LM1B, GPT-2-Large evaluator; as published, not comparable)", "",
           "| model | steps | gen PPL | entropy |", "|---|---|---|---|"]
    md += [f"| {name.split(',')[0]} | {k} | {v[0]} | {v[1]} |" for name, d in PUBLISHED.items() for k, v in d.items()]
    md += ["", "## Sample text (first 3 samples; up to the first <eos>)", ""]
    for (m, k), texts in text["texts"].items():
        md += [f"**{m.upper()}{'' if m == 'real' else f', {k} steps'}**", "", "```"]
        md += [t.strip()[:400] + "\n---" for t in texts] + ["```", ""]
    return result, "\n".join(md) + "\n"
