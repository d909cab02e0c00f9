"""The language benchmark: ``modaflow bench language --profile P``.

In one run, on the same data, tokenizer and seeds:

1. Shakespeare (split by work): FLM (Euler, 8-1024 steps), FMLM (its flow map distilled by
   progressive self-distillation, 1-8 steps) and the MDLM masked-diffusion baseline of the
   same size (1-128 steps), scored by an in-suite causal LM trained on the same train split:
   gen PPL (token-weighted, first-EOS masked), per-sample entropy (nats), n-gram
   Jensen-Shannon to held-out text, Self-BLEU and samples/s; reference lines: the evaluator's
   held-out PPL, the data's entropy, JS and Self-BLEU of real training blocks.
2. The exact tier: the same methods on a known Markov chain, scored by the true chain NLL.
3. Training throughput: FLM's low-rank noisy input (+ chunked CE; + compile and bf16 on CUDA)
   against the dense-input eager reference step (:mod:`.language_speed`).

Profiles: ``smoke`` (seconds, the tests run it), ``quick`` (minutes on 2 CPU cores, small BPE
and DiT), ``full`` (hours on CPU), ``gpu`` (CUDA; GPT-2-small-size throughput, V = 50 257).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from modaflow.core.io import atomic_write_text
from modaflow.core.training import TrainerArgs
from modaflow.modalities.language.evaluator import token_nll
from modaflow.modalities.language.flm import final_logits_flm, pick_tokens
from modaflow.modalities.language.fmlm import final_logits_fmlm
from modaflow.modalities.language.metrics import first_eos_mask, gen_ppl, ngram_js, sample_entropy, self_bleu
from modaflow.modalities.language.generation import decode, generate
from modaflow.modalities.language.recipe import LanguageConfig, SampleOptions, markov_source, prepare, restore, train
from modaflow.modalities.language.tokenizer import EOS

from . import report as R
from .harness import BenchResult, progress, quiet_training, select_profile, torch_threads
from .language_speed import SpeedSettings, training_throughput

__all__ = ["LanguageProfile", "PROFILES", "run", "closest_entropy"]


@dataclass(frozen=True)
class LanguageProfile:
    """Sizes of one benchmark profile."""

    text: LanguageConfig
    """Recipe of the Shakespeare models (data, tokenizer, size, training steps)."""
    markov: LanguageConfig
    """Recipe of the exact tier (Markov chain)."""
    text_fmlm_steps: int
    """Distillation steps of the Shakespeare FMLM."""
    markov_fmlm_steps: int
    """Distillation steps of the Markov FMLM."""
    ar_steps: int
    """Training steps of the evaluator LM."""
    n_eval: int
    """Samples per (method, steps) cell, drawn as ``sample_seeds`` seeds of ``n_eval / sample_seeds``."""
    flm_steps: tuple[int, ...]
    """FLM sampler steps."""
    fmlm_steps: tuple[int, ...]
    """FMLM map steps."""
    mdlm_steps: tuple[int, ...]
    """MDLM sampler steps."""
    markov_methods: tuple[str, ...]
    """Methods trained on the Markov chain."""
    speed: SpeedSettings
    """Training-throughput sizes."""
    fmlm_variants: tuple[str, ...] = ()
    """Other core flow-map losses to distil the same FLM with (Shakespeare), beside progressive:
    teacher (CE objective), lagrangian / eulerian (MSE objective); rows ``fmlm-<loss>``."""
    text_fmlm_lr_mult: float = 1 / 3
    """Learning rate of the Shakespeare FMLM's distillation, as a multiple of its FLM's."""
    sample_seeds: int = 2
    """Sampling seeds per cell: rows report the pooled metrics and the half-range of the seeds' values."""
    match_steps: int = 32
    """MDLM steps of the matched-entropy comparison (the goal's MDLM@32)."""
    match_temperatures: tuple[float, ...] = ()
    """Extra MDLM temperatures at ``match_steps`` (besides 1; MDLM's entropy at a temperature varies by seed, so the
    grid is wide): their gen PPL vs entropy points give
    MDLM's gen PPL at FMLM@4's entropy by interpolation (rows ``mdlm-t<T>``)."""
    calibrate_temperatures: tuple[float, ...] = ()
    """Last-step temperatures of the validation rule (empty: off). Fixed in advance and applied to every method
    alike: each FLM / FMLM cell of ``calibrate_cells``, and MDLM at ``match_steps`` (its temperature acts at every reveal; grid 1 and
    ``match_temperatures``), gets the temperature whose entropy on calibration draws (sampling seeds ``5000 + seed
    + 1000 i``, not the reported ones) is closest to the validation blocks' (the last ``val_blocks`` train blocks);
    rows ``<method>-cal`` redraw the reported cells' final logits at it (issue 8: "temperature and top-p options
    for the last step")."""
    calibrate_cells: tuple[tuple[str, int], ...] = ()
    """The FLM / FMLM ``(method, steps)`` cells the rule calibrates (the goals' cells: each costs a second pass)."""
    val_blocks: int = 256
    """Validation blocks of the calibration rule: the last ones of the train split (never the test split)."""
    threads: int = 1
    """torch threads (0: torch's default)."""
    device: str = "cpu"
    """Where training and sampling run."""


def _distill(cfg: LanguageConfig, steps: int, teacher: str, lr_mult: float = 1 / 3) -> LanguageConfig:
    """The fmlm run of ``cfg``: ``steps`` distillation steps at ``lr_mult`` times the learning rate."""
    fm = cfg.fm.replace(max_steps=steps, lr=cfg.fm.lr * lr_mult, warmup_steps=0, log_every=max(1, steps // 40), ckpt_every=steps)
    return cfg.replace(method="fmlm", teacher=teacher, fm=fm)


def _cfg(data: str, tokenizer: str, vocab: int, L: int, dim: int, depth: int, heads: int, steps: int,
         batch: int, max_chars: int = 0, markov_vocab: int = 64, markov_train: int = 4096, lr: float = 1e-3) -> LanguageConfig:
    base = LanguageConfig(data=data, tokenizer=tokenizer, vocab_size=vocab, block_len=L, dim=dim, depth=depth, heads=heads,
                          max_chars=max_chars, markov_vocab=markov_vocab, markov_train=markov_train)
    every = max(1, steps // 40)
    return base.replace(fm=base.fm.replace(max_steps=steps, batch_size=batch, lr=lr, log_every=every, ckpt_every=steps,
                                           warmup_steps=min(50, steps // 10)))




_ALL = ("flm", "fmlm", "mdlm")
PROFILES: dict[str, LanguageProfile] = {
    "smoke": LanguageProfile(
        text=_cfg("shakespeare", "char", 0, 32, 32, 1, 2, 25, 16, max_chars=15_000),
        markov=_cfg("markov", "char", 0, 32, 32, 1, 2, 25, 16, markov_vocab=64, markov_train=128),
        text_fmlm_steps=8, markov_fmlm_steps=8,
        ar_steps=25, n_eval=8, flm_steps=(8, 16), fmlm_steps=(1, 4), mdlm_steps=(1, 8), markov_methods=("flm",), fmlm_variants=("teacher",),
        match_steps=8, match_temperatures=(0.8,), calibrate_temperatures=(0.0, 1.0),
        calibrate_cells=(("flm", 8), ("fmlm", 1), ("fmlm", 4)),
        speed=SpeedSettings(vocab=512, block_len=32, dim=32, depth=1, heads=2, batch=8, steps=2, warmup=1),
    ),
    "quick": LanguageProfile(
        text=_cfg("shakespeare", "bpe", 512, 64, 64, 2, 4, 480, 32, max_chars=1_500_000, lr=2e-3),
        markov=_cfg("markov", "char", 0, 64, 64, 2, 4, 250, 32, markov_vocab=128, markov_train=2048, lr=2e-3),
        # 480 distillation steps at the FLM's learning rate (was 240 at a third of it): chosen on validation
        # (calibration noise and the last 256 train blocks, language_fmlm_diag --sweep; benchmarks/RESULTS.md):
        # FMLM@1 gen PPL / entropy 619 / 3.59 -> 507 / 3.60 (seed 0), 746 / 3.61 -> 511 / 3.60 (seed 1); at the
        # validation-calibrated temperature FMLM@1 / FLM@8 gen PPL 1.12 -> 0.97 and 1.04 -> 0.81
        text_fmlm_steps=480, markov_fmlm_steps=80, text_fmlm_lr_mult=1.0,
        ar_steps=300, n_eval=64, flm_steps=(8, 32, 128), fmlm_steps=(1, 2, 4, 8), mdlm_steps=(1, 4, 16, 32, 128),
        markov_methods=_ALL, match_temperatures=(0.5, 0.6, 0.7, 0.8, 0.9, 1.1),
        calibrate_temperatures=(0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2),
        calibrate_cells=(("flm", 8), ("fmlm", 1), ("fmlm", 4)),
        speed=SpeedSettings(vocab=4096, block_len=64, dim=96, depth=2, heads=4, batch=16, steps=5),
    ),
    "full": LanguageProfile(
        text=_cfg("shakespeare", "bpe", 1024, 128, 256, 6, 8, 20_000, 64, lr=5e-4),
        markov=_cfg("markov", "char", 0, 128, 128, 4, 4, 5000, 64, markov_vocab=256, markov_train=16384, lr=1e-3),
        text_fmlm_steps=5000, markov_fmlm_steps=2000,
        ar_steps=10_000, n_eval=128, flm_steps=(8, 32, 128, 1024), fmlm_steps=(1, 2, 4, 8), mdlm_steps=(1, 4, 16, 32, 128),
        markov_methods=_ALL, threads=0, match_temperatures=(0.5, 0.6, 0.7, 0.8, 0.9, 1.1), fmlm_variants=("teacher", "lagrangian"),
        speed=SpeedSettings(vocab=8192, block_len=128, dim=256, depth=4, heads=8, batch=16, steps=5),
    ),
    "gpu": LanguageProfile(
        text=_cfg("shakespeare", "bpe", 8192, 128, 768, 12, 12, 20_000, 128, lr=3e-4),
        markov=_cfg("markov", "char", 0, 128, 256, 6, 8, 10_000, 128, markov_vocab=512, markov_train=65536, lr=5e-4),
        text_fmlm_steps=5000, markov_fmlm_steps=3000,
        ar_steps=10_000, n_eval=256, flm_steps=(8, 32, 128, 1024), fmlm_steps=(1, 2, 4, 8), mdlm_steps=(1, 4, 16, 32, 128),
        markov_methods=_ALL, threads=0, device="cuda", match_temperatures=(0.5, 0.6, 0.7, 0.8, 0.9, 1.1), fmlm_variants=("teacher", "lagrangian"),
        speed=SpeedSettings(vocab=50_257, block_len=128, dim=768, depth=12, heads=12, batch=128, steps=20, warmup=5, device="cuda"),
    ),
}


def _train_all(p: LanguageProfile, cfg: LanguageConfig, fmlm_steps: int, methods: tuple[str, ...], out: Path, key: str,
               with_ar: bool, variants: tuple[str, ...] = ()) -> dict:
    """Train the methods (and the evaluator) of one data source; returns losses, timings."""
    targs = TrainerArgs(accelerator="gpu" if p.device == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if p.device == "cuda" else "32-true")
    res = {"losses": {}, "timings": {}}
    todo = [("flm", cfg.replace(method="flm"))]
    if "mdlm" in methods:
        todo.append(("mdlm", cfg.replace(method="mdlm")))
    if with_ar:
        todo.append(("ar", cfg.replace(method="ar", fm=cfg.fm.replace(max_steps=p.ar_steps, ckpt_every=p.ar_steps))))
    if "fmlm" in methods:
        lr_mult = p.text_fmlm_lr_mult if key == "text" else 1 / 3
        todo.append(("fmlm", _distill(cfg, fmlm_steps, str(out / "runs" / f"{key}-flm"), lr_mult)))
        for loss in variants:
            c = _distill(cfg, fmlm_steps, str(out / "runs" / f"{key}-flm"), lr_mult)
            todo.append((f"fmlm-{loss}", c.replace(fmlm_loss=loss, fmlm_objective="ce" if loss == "teacher" else "mse")))
    for name, c in progress(todo, f"train {key}"):
        t0 = time.perf_counter()
        with quiet_training():
            summary = train(c, targs, out / "runs" / f"{key}-{name}", progress=False)
        res["timings"][f"train.{key}.{name}_s"] = time.perf_counter() - t0
        res["losses"][f"{key} {name}"] = tuple(zip(*summary["history"])) if summary["history"] else ((), ())
    return res


def _timed_draws(draw, net, n: int, seed: int, device: str, seeds: int) -> tuple[list[torch.Tensor], float]:
    """``draw(net, n // seeds, seed + 1000 i)`` for ``i < seeds`` on ``device``, and samples/s overall."""
    net = net.to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = [draw(net, n // seeds, seed + 1000 * i) for i in range(seeds)]
    if device == "cuda":
        torch.cuda.synchronize()
    return out, seeds * (n // seeds) / (time.perf_counter() - t0)


def _sample(cfg, net, n: int, steps: int, seed: int, device: str, seeds: int = 1,
            options: SampleOptions | None = None) -> tuple[list[torch.Tensor], float]:
    """``seeds`` draws of ``n // seeds`` samples (seeds ``seed + 1000 i``) and samples/s overall."""
    xs, rate = _timed_draws(lambda m, k, s: generate(cfg, m, k, steps, s, options or SampleOptions()), net, n, seed,
                            device, seeds)
    return [x.cpu() for x in xs], rate


def _final_logits(cfg, net, n: int, steps: int, seed: int, device: str, seeds: int) -> tuple[list[torch.Tensor], float]:
    """FLM / FMLM: the last network call's logits of ``seeds`` draws of ``n // seeds`` samples (seeds
    ``seed + 1000 i``, the noise of :func:`_sample`'s) and samples/s; their argmax is ``_sample``'s tokens."""
    fn = final_logits_flm if cfg.method == "flm" else final_logits_fmlm
    return _timed_draws(lambda m, k, s: fn(m, k, cfg.block_len, steps, s), net, n, seed, device, seeds)


def _draw(logits: list[torch.Tensor], seed: int, temperature: float) -> list[torch.Tensor]:
    """Tokens from the final logits of the draws ``seed + 1000 i`` at ``temperature`` (0 = argmax), with the
    generators :func:`~modaflow.modalities.language.flm.generate_flm` would use."""
    return [pick_tokens(lg, temperature, 1.0, torch.Generator(lg.device).manual_seed(seed + 1000 * i + 1)).cpu()
            for i, lg in enumerate(logits)]


def closest_entropy(entropies: dict[float, float], target: float) -> float:
    """The calibration rule: the temperature whose entropy is closest to ``target`` (ties: the lower one)."""
    return min(sorted(entropies), key=lambda temp: abs(entropies[temp] - target))


def _text_row(xs: list[torch.Tensor], ev, test: torch.Tensor, rate: float) -> dict:
    """Metrics of the pooled samples; ``*_spread``: half the range of the per-seed gen PPL / entropy."""
    x = torch.cat(xs)
    mask, nll = first_eos_mask(x, EOS), token_nll(ev, x)
    # entropy: of all generated token ids, as REFERENCE §3 defines it (gen PPL alone masks after the first
    # <eos>); entropy_prefix: of the tokens up to the first <eos> only, the definition used before 2026-11-26
    row = {"gen_ppl": gen_ppl(nll, mask), "entropy": sample_entropy(x), "entropy_prefix": sample_entropy(x, mask),
           "js_2gram": ngram_js(x, test, 2), "js_4gram": ngram_js(x, test, 4), "self_bleu": self_bleu(x, 4, mask),
           "samples_per_s": rate, "prefix_len": float(mask.sum(1).float().mean())}  # tokens up to the first <eos>
    parts, i = [], 0
    for xi in xs:
        sl = slice(i, i + xi.shape[0])
        parts.append((gen_ppl(nll[sl], mask[sl]), sample_entropy(x[sl])))
        i += xi.shape[0]
    row["gen_ppl_spread"] = (max(p[0] for p in parts) - min(p[0] for p in parts)) / 2
    row["entropy_spread"] = (max(p[1] for p in parts) - min(p[1] for p in parts)) / 2
    return row


def _grid(p: LanguageProfile, methods: tuple[str, ...]) -> list[tuple[str, int]]:
    steps = {"flm": p.flm_steps, "fmlm": p.fmlm_steps, "mdlm": p.mdlm_steps}
    return [(m, k) for m in methods for k in steps[m.split("-")[0]]]


def _eval_text(p: LanguageProfile, out: Path, seed: int) -> dict:
    key = "text"
    res = _train_all(p, p.text, p.text_fmlm_steps, _ALL, out, key, with_ar=True, variants=p.fmlm_variants)
    runs = out / "runs"
    _, _, ev = restore(runs / f"{key}-ar")
    ev = ev.to(p.device)
    cfg0, tok, _ = restore(runs / f"{key}-flm")
    _, train_blocks, test = prepare(cfg0, tok)
    real = train_blocks[torch.randperm(train_blocks.shape[0], generator=torch.Generator().manual_seed(seed))[: p.n_eval]]
    real_mask = first_eos_mask(real, EOS)
    ref_line = {
        "evaluator_test_ppl": gen_ppl(token_nll(ev, test), first_eos_mask(test, EOS)),
        "data_entropy": sample_entropy(test), "data_entropy_prefix": sample_entropy(test, first_eos_mask(test, EOS)),
        "data_prefix_len": float(first_eos_mask(test, EOS).sum(1).float().mean()),
        "data_js_2gram": ngram_js(real, test, 2), "data_js_4gram": ngram_js(real, test, 4),
        "data_self_bleu": self_bleu(real, 4, real_mask),
        "data_train_block_ppl": gen_ppl(token_nll(ev, real), real_mask),
    }
    val_entropy = sample_entropy(train_blocks[-p.val_blocks:])  # the calibration rule's target (train split only)
    ref_line["val_entropy"] = val_entropy
    rows, texts, cal_rows = {}, {}, {}
    methods = _ALL + tuple(f"fmlm-{v}" for v in p.fmlm_variants)
    nets = {m: restore(runs / f"{key}-{m}") for m in methods}
    for m, k in progress(_grid(p, methods), "sample text"):
        c, _, net = nets[m]
        if c.method == "mdlm":
            xs, rate = _sample(c, net, p.n_eval, k, seed, p.device, p.sample_seeds)
        else:  # argmax of the final logits (= generate's tokens); the calibrated row redraws the same logits
            logits, rate = _final_logits(c, net, p.n_eval, k, seed, p.device, p.sample_seeds)
            xs = _draw(logits, seed, 0.0)
            if p.calibrate_temperatures and (m, k) in p.calibrate_cells:
                cal = _final_logits(c, net, p.n_eval, k, 5000 + seed, p.device, p.sample_seeds)[0]
                temp = closest_entropy({t: sample_entropy(torch.cat(_draw(cal, 5000 + seed, t))) for t in p.calibrate_temperatures},
                                       val_entropy)
                cal_rows[(f"{m}-cal", k)] = {**_text_row(_draw(logits, seed, temp), ev, test, rate), "temperature": temp}
        rows[(m, k)] = _text_row(xs, ev, test, rate)
        texts[(m, k)] = decode(tok, xs[0][:3])
    match_rows = {}  # MDLM at match_steps and lower temperatures: its gen PPL vs entropy curve
    for temp in progress(p.match_temperatures, "sample mdlm temperatures"):
        c, _, net = nets["mdlm"]
        xs, rate = _sample(c, net, p.n_eval, p.match_steps, seed, p.device, p.sample_seeds, SampleOptions(temperature=temp))
        match_rows[(f"mdlm-t{temp:g}", p.match_steps)] = _text_row(xs, ev, test, rate)
    if p.calibrate_temperatures:  # MDLM@match_steps: the same rule over its temperatures (1 and match_temperatures)
        c, _, net = nets["mdlm"]
        ent = {}
        for temp in progress((1.0, *p.match_temperatures), "calibrate mdlm"):
            xs = _sample(c, net, p.n_eval, p.match_steps, 5000 + seed, p.device, p.sample_seeds, SampleOptions(temperature=temp))[0]
            ent[temp] = sample_entropy(torch.cat(xs))
        temp = closest_entropy(ent, val_entropy)
        row = rows[("mdlm", p.match_steps)] if temp == 1.0 else match_rows[(f"mdlm-t{temp:g}", p.match_steps)]
        cal_rows[("mdlm-cal", p.match_steps)] = {**row, "temperature": temp}  # the reported draws at that temperature
    texts[("real", 0)] = decode(tok, real[:3])
    return {**res, "rows": rows, "match_rows": match_rows, "cal_rows": cal_rows, "ref": ref_line, "texts": texts,
            "vocab": cfg0.vocab}


def _eval_markov(p: LanguageProfile, out: Path, seed: int) -> dict:
    key = "markov"
    methods = p.markov_methods
    res = _train_all(p, p.markov, p.markov_fmlm_steps, methods, out, key, with_ar=False)
    src = markov_source(p.markov)
    real = src.sample(p.n_eval, p.markov.block_len, seed=10 + seed)
    rows = {}
    for m, k in progress(_grid(p, methods), "sample markov"):
        c, _, net = restore(out / "runs" / f"{key}-{m}")
        xs, rate = _sample(c, net, p.n_eval, k, seed, p.device)
        x = xs[0]
        rows[(m, k)] = {"true_nll": float(src.nll(x).mean()), "entropy": sample_entropy(x), "samples_per_s": rate}
    ref_line = {"expected_true_nll": src.expected_nll(p.markov.block_len), "entropy_rate": src.entropy_rate(),
                "real_true_nll": float(src.nll(real).mean()), "data_entropy": sample_entropy(real)}
    return {**res, "rows": rows, "ref": ref_line}


def run(profile: str, out_dir: str | Path, seed: int = 0) -> BenchResult:
    """Run the language benchmark ``profile`` into ``out_dir``: ``results.json``, ``report.md``
    and PNG plots. ``seed`` seeds training (every run's ``fm.seed``) and sampling. Returns the result."""
    p = select_profile(PROFILES, profile)
    # the seed also seeds training (every run's fm.seed; 0 is the profiles' own), so --seed draws new models
    p = replace(p, text=p.text.replace(fm=p.text.fm.replace(seed=seed)), markov=p.markov.replace(fm=p.markov.fm.replace(seed=seed)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(p.threads):
        return _run(profile, p, out, seed)


def _run(profile: str, p: LanguageProfile, out: Path, seed: int) -> BenchResult:
    from .language_report import assemble  # tables, goals, plots and sample text

    t0 = time.perf_counter()
    text = _eval_text(p, out, seed)
    markov = _eval_markov(p, out, seed)
    speed = training_throughput(p.speed, seed)
    result, extra_md = assemble(profile, p, seed, text, markov, speed, out)
    result.timings["total_s"] = time.perf_counter() - t0
    result.write(out)
    path = R.write_report(result, out)
    atomic_write_text(path, path.read_text() + "\n" + extra_md)
    return result
