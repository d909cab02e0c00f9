"""Component experiment for FLM's training (``python -m benchmarks.language_flm_probe``).

Trains an FLM at the ``quick`` text settings of :mod:`.language` on the Shakespeare train
split minus a held-out validation part (the last ``val_blocks`` blocks of the train split,
never the test split), then reports on the validation blocks the clean-token cross-entropy
and accuracy of the denoiser at a few reparameterized times ``t`` (``gamma = gamma(t)``;
low ``t`` is where the denoiser must use context), for the raw and the EMA weights, and the
gen PPL / entropy of ``n_gen`` 8-step samples under an evaluator run folder (a trained ``ar``
run with the same tokenizer, e.g. ``<bench out>/runs/text-ar``). Used to choose the FLM
training defaults (initialisation, time distribution, learning rate, EMA, steps).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from modaflow.core.losses import token_cross_entropy
from modaflow.core.training import TrainerArgs, fit
from modaflow.modalities.language import data as D
from modaflow.modalities.language.evaluator import token_nll
from modaflow.modalities.language.flm import generate_flm
from modaflow.modalities.language.fmlm import generate_fmlm, student_from_flm
from modaflow.modalities.language.metrics import first_eos_mask, gen_ppl, sample_entropy
from modaflow.modalities.language.recipe import build_module, build_network, prepare, restore, seeded_network
from modaflow.modalities.language.tokenizer import EOS

from .harness import quiet_training
from .language import PROFILES

EVAL_T = (0.05, 0.2, 0.4, 0.6, 0.8)
EVAL_GAMMA = (0.6, 0.75, 0.85, 0.9, 0.95, 0.98)
"""Path times of the CE-vs-gamma curve (fixed gammas: comparable across time tables)."""


@torch.no_grad()
def val_scores(net, blocks: torch.Tensor, seed: int = 123, by_gamma: bool = True) -> dict:
    """Clean-token CE (nats) and accuracy of the denoiser on ``blocks`` at each ``gamma`` of
    EVAL_GAMMA (``by_gamma``; keys ``g=...``) or each table time ``t`` of EVAL_T (``t=...``)."""
    net.eval()
    out = {}
    gen = torch.Generator().manual_seed(seed)
    for t in (EVAL_GAMMA if by_gamma else EVAL_T):
        full = torch.full((blocks.shape[0],), t, dtype=torch.float64)
        g = (full if by_gamma else net.reparam.gamma_of_t(full)).float()
        noise = torch.randn(*blocks.shape, net.noise_rank, generator=gen)
        hidden = net.trunk(net.embed_noisy(blocks, g, noise), net.condition(g, None))
        logits = net.out(hidden).float()
        ce = token_cross_entropy(logits, blocks).mean()
        acc = (logits.argmax(-1) == blocks).float().mean()
        out[f"{'g' if by_gamma else 't'}={t}"] = (round(float(ce), 3), round(float(acc), 3))
    return out


@torch.no_grad()
def mdlm_val_scores(net, blocks: torch.Tensor, seed: int = 123) -> dict:
    """MDLM: CE (nats) and accuracy on the masked tokens of ``blocks`` at mask rate ``t`` of EVAL_T."""
    from modaflow.modalities.language.mdlm import mask_tokens

    net.eval()
    out = {}
    gen = torch.Generator().manual_seed(seed)
    for t in EVAL_T:
        tt = torch.full((blocks.shape[0],), t)
        z, masked = mask_tokens(blocks, tt, torch.rand(blocks.shape, generator=gen), net.cfg.vocab_size)
        logits = net(z, tt).float()[masked]
        out[f"t={t}"] = (round(float(torch.nn.functional.cross_entropy(logits, blocks[masked])), 3),
                         round(float((logits.argmax(-1) == blocks[masked]).float().mean()), 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--evaluator", required=True)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=-1)
    ap.add_argument("--ema", type=float, default=-1.0)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--time_sampler", default="")
    ap.add_argument("--time_shift", type=float, default=1.0)
    ap.add_argument("--ln_m", type=float, default=0.0)
    ap.add_argument("--ln_s", type=float, default=1.0)
    ap.add_argument("--zero_out", type=int, default=-1, help="-1: model default; 0/1 force the output init")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val_blocks", type=int, default=256)
    ap.add_argument("--n_gen", type=int, default=64)
    ap.add_argument("--time_table", default="", choices=("", "embedded", "onehot"))
    ap.add_argument("--fmlm_steps", type=int, default=0, help="> 0: distil an FMLM from the EMA FLM and score 1 and 4 steps")
    ap.add_argument("--fmlm_loss", default="progressive", choices=("progressive", "teacher"))
    ap.add_argument("--fmlm_grid", type=float, default=0.0, help="FMLM grid_fraction")
    ap.add_argument("--fmlm_grid_steps", default="1,2,4,8", help="FMLM grid_steps (comma-separated; repeats weight a grid)")
    ap.add_argument("--fmlm_hard_final", type=int, default=0, help="1: FMLM hard_final")
    ap.add_argument("--fmlm_lr_mult", type=float, default=1 / 3, help="distillation lr as a multiple of the FLM's")
    ap.add_argument("--save_flm", default="", help="save the EMA FLM's state dict here")
    ap.add_argument("--load_flm", default="", help="skip FLM training: load this EMA state dict (same settings)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--method", default="flm", choices=("flm", "mdlm"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    p = PROFILES["quick"]
    cfg = p.text.replace(method=a.method, time_table=a.time_table or p.text.time_table)
    fm = cfg.fm.replace(time_sampler=a.time_sampler or cfg.fm.time_sampler, time_shift=a.time_shift, logit_normal_m=a.ln_m,
                         logit_normal_s=a.ln_s)
    for name, val, unset in (("max_steps", a.steps, 0), ("lr", a.lr, 0.0), ("warmup_steps", a.warmup, -1),
                             ("ema_decay", a.ema, -1.0), ("batch_size", a.batch, 0)):
        if val != unset:
            fm = fm.replace(**{name: val})
    fm = fm.replace(seed=a.seed)
    fm = fm.replace(ckpt_every=fm.max_steps, log_every=max(1, fm.max_steps // 10))
    _, tok, ev = restore(a.evaluator)
    tok_, blocks, _ = prepare(cfg, tok)
    train_blocks, val = blocks[: -a.val_blocks], blocks[-a.val_blocks:]
    cfg = cfg.replace(vocab=tok.get_vocab_size(), fm=fm)
    net = seeded_network(cfg)
    if a.zero_out >= 0:
        if a.zero_out:
            torch.nn.init.zeros_(net.out.weight)
            torch.nn.init.zeros_(net.out.bias)
        else:
            net.out.reset_parameters()
    module = build_module(cfg, net)
    t0 = time.perf_counter()
    if not a.load_flm:
        with tempfile.TemporaryDirectory() as d, quiet_training():
            fit(module, D.block_loader(train_blocks, fm.batch_size, fm.seed), Path(d), TrainerArgs(accelerator="cpu", devices=1),
                progress=False)
    train_s = time.perf_counter() - t0
    if a.method == "mdlm":
        ema_net = build_network(cfg)
        module.ema.copy_to(ema_net)
        print(json.dumps({"tag": a.tag, "args": vars(a), "train_s": round(train_s, 1), "val_raw": mdlm_val_scores(module.model, val),
                          "val_ema": mdlm_val_scores(ema_net, val)}))
        return
    ema_net = build_network(cfg)
    if a.load_flm:
        ema_net.load_state_dict(torch.load(a.load_flm))
        raw = {}
    else:
        raw = val_scores(module.model, val)
        ema_net.load_state_dict(module.model.state_dict())
        module.ema.copy_to(ema_net)
    if a.save_flm:
        torch.save(ema_net.state_dict(), a.save_flm)
    ema = val_scores(ema_net, val)
    res = {"tag": a.tag, "args": vars(a), "train_s": round(train_s, 1), "s_per_step": round(train_s / fm.max_steps, 4),
           "val_raw": raw, "val_ema": ema, "flm8": _gen_scores(generate_flm, ema_net.eval(), a.n_gen, cfg.block_len, 8, ev)}
    if a.fmlm_steps > 0:
        fcfg = cfg.replace(method="fmlm", teacher="probe", fmlm_loss=a.fmlm_loss, fmlm_grid_fraction=a.fmlm_grid,
                           fmlm_grid_steps=tuple(int(v) for v in a.fmlm_grid_steps.split(",")), fmlm_hard_final=bool(a.fmlm_hard_final),
                           fm=fm.replace(max_steps=a.fmlm_steps, lr=fm.lr * a.fmlm_lr_mult, warmup_steps=0, ckpt_every=a.fmlm_steps))
        student = student_from_flm(ema_net)
        fmod = build_module(fcfg, student, teacher=ema_net if a.fmlm_loss == "teacher" else None)
        with tempfile.TemporaryDirectory() as d, quiet_training():
            fit(fmod, D.block_loader(train_blocks, fm.batch_size, fm.seed), Path(d), TrainerArgs(accelerator="cpu", devices=1),
                progress=False)
        fnet = build_network(fcfg)
        fnet.load_state_dict(student.state_dict())
        fmod.ema.copy_to(fnet)
        for k in (1, 4):
            res[f"fmlm{k}"] = _gen_scores(generate_fmlm, fnet.eval(), a.n_gen, cfg.block_len, k, ev)
    print(json.dumps(res))


def _gen_scores(fn, net, n: int, length: int, steps: int, ev) -> dict:
    """Gen PPL and entropy of ``n`` samples (two sampling seeds of ``n/2``; the pooled value and each half's)."""
    xs = [fn(net, n // 2, length, steps, seed=s) for s in (0, 1)]
    out = {}
    for name, x in (("all", torch.cat(xs)), ("s0", xs[0]), ("s1", xs[1])):
        mask = first_eos_mask(x, EOS)
        out[name] = (round(gen_ppl(token_nll(ev.eval(), x), mask), 1), round(sample_entropy(x, mask), 3))
    return out


if __name__ == "__main__":
    main()
