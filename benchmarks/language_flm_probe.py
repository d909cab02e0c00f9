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
from modaflow.modalities.language.metrics import first_eos_mask, gen_ppl, sample_entropy
from modaflow.modalities.language.recipe import build_module, build_network, prepare, restore
from modaflow.modalities.language.tokenizer import EOS

from .harness import quiet_training
from .language import PROFILES

EVAL_T = (0.05, 0.2, 0.4, 0.6, 0.8)


@torch.no_grad()
def val_scores(net, blocks: torch.Tensor, seed: int = 123) -> dict:
    """Clean-token CE (nats) and accuracy of the denoiser on ``blocks`` at each ``t`` of EVAL_T."""
    net.eval()
    out = {}
    gen = torch.Generator().manual_seed(seed)
    for t in EVAL_T:
        g = net.reparam.gamma_of_t(torch.full((blocks.shape[0],), t, dtype=torch.float64)).float()
        noise = torch.randn(*blocks.shape, net.noise_rank, generator=gen)
        hidden = net.trunk(net.embed_noisy(blocks, g, noise), net.condition(g, None))
        logits = net.out(hidden).float()
        ce = token_cross_entropy(logits, blocks).mean()
        acc = (logits.argmax(-1) == blocks).float().mean()
        out[f"t={t}"] = (round(float(ce), 3), round(float(acc), 3))
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
    ap.add_argument("--n_gen", type=int, default=32)
    ap.add_argument("--tag", default="")
    ap.add_argument("--method", default="flm", choices=("flm", "mdlm"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    p = PROFILES["quick"]
    cfg = p.text.replace(method=a.method)
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
    net = build_network(cfg)
    if a.zero_out >= 0:
        if a.zero_out:
            torch.nn.init.zeros_(net.out.weight)
            torch.nn.init.zeros_(net.out.bias)
        else:
            net.out.reset_parameters()
    module = build_module(cfg, net)
    t0 = time.perf_counter()
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
    raw = val_scores(module.model, val)
    ema_net = build_network(cfg)
    ema_net.load_state_dict(module.model.state_dict())
    module.ema.copy_to(ema_net)
    ema = val_scores(ema_net, val)
    x = generate_flm(ema_net.eval(), a.n_gen, cfg.block_len, 8, seed=0)
    mask = first_eos_mask(x, EOS)
    res = {"tag": a.tag, "args": vars(a), "train_s": round(train_s, 1), "s_per_step": round(train_s / fm.max_steps, 4),
           "val_raw": raw, "val_ema": ema, "gen8_ppl": round(gen_ppl(token_nll(ev.eval(), x), mask), 1),
           "gen8_entropy": round(sample_entropy(x, mask), 3)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
