"""Generation and scoring of a trained language run: ``generate`` (tokens), ``decode``
(text), and the CLI's ``sample`` (write and print decoded text) and ``evaluate`` (metrics
against the test split: entropy, n-gram JS, Self-BLEU; gen PPL under an evaluator run; the
true NLL on Markov data)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from modaflow.core.config import ConfigError
from modaflow.core.devices import pick_device

from .evaluator import token_nll
from .flm import generate_flm
from .fmlm import generate_fmlm
from .mdlm import generate_mdlm
from .metrics import first_eos_mask, gen_ppl, ngram_js, sample_entropy, self_bleu
from .recipe import SOLVERS, LanguageConfig, SampleOptions, check_vocabulary, markov_source, prepare, restore
from .tokenizer import EOS

__all__ = ["generate", "decode", "sample", "score", "evaluate"]


def generate(cfg: LanguageConfig, net: nn.Module, n: int, steps: int, seed: int, options: SampleOptions | None = None) -> Tensor:
    """``n`` blocks ``(n, length)`` from the network of a run, in ``steps`` network calls."""
    o = options or SampleOptions()
    length = o.length or cfg.block_len
    if length > cfg.block_len:
        raise ConfigError(f"length: {length} tokens is longer than the model's block_len = {cfg.block_len}")
    if cfg.method == "ar":
        raise ConfigError("method 'ar' is the evaluator; sample the flm, fmlm or mdlm runs")
    temp = o.temperature if o.temperature >= 0 else (1.0 if cfg.method == "mdlm" else 0.0)
    fn = {"flm": generate_flm, "fmlm": generate_fmlm, "mdlm": generate_mdlm}[cfg.method]
    return fn(net, n, length, steps, seed, temperature=temp, top_p=o.top_p)


def decode(tok, tokens: Tensor) -> list[str]:
    """Text of each block up to its first ``<eos>`` (``<bos>`` dropped); markov blocks as ids."""
    mask = first_eos_mask(tokens, None if tok is None else EOS)
    texts = []
    for row, m in zip(tokens.tolist(), mask.sum(1).long().tolist()):
        if tok is None:
            texts.append(" ".join(map(str, row)))
        else:
            texts.append(tok.decode([i for i in row[:m] if i != EOS], skip_special_tokens=True))
    return texts


def sample(ckpt_dir: str | Path, n: int, steps: int | None, solver: str | None, out_path: str | Path, seed: int,
           options: SampleOptions | None = None) -> Path:
    """Write ``n`` decoded samples to ``out_path`` (``.jsonl``: ``{"text": ...}`` per line; else
    plain text, samples separated by blank-line-delimited ``=== sample i ===`` headers) and
    print them."""
    if solver not in (None, *SOLVERS):
        raise ConfigError(f"solver: language samplers are {list(SOLVERS)}; got {solver!r}")
    cfg, tok, net = restore(ckpt_dir)
    net = net.to(pick_device((options or SampleOptions()).device))
    texts = decode(tok, generate(cfg, net, n, steps or cfg.steps, seed, options).cpu())
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        body = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    else:
        body = "".join(f"=== sample {i} ===\n{t}\n\n" for i, t in enumerate(texts))
    out.write_text(body, encoding="utf-8")
    for i, t in enumerate(texts):
        print(f"=== sample {i} ===\n{t}\n")
    return out


def score(tokens: Tensor, ref: Tensor, eos: int | None) -> dict[str, float]:
    """Entropy (of all token ids, REFERENCE §3) and ``entropy_prefix`` (of the tokens up to the
    first ``<eos>``), 2-gram/4-gram Jensen-Shannon to ``ref`` and Self-BLEU of ``tokens``."""
    mask = first_eos_mask(tokens, eos)
    out = {"entropy": sample_entropy(tokens), "entropy_prefix": sample_entropy(tokens, mask),
           "js_2gram": ngram_js(tokens, ref, 2), "js_4gram": ngram_js(tokens, ref, 4)}
    if tokens.shape[0] >= 2:
        out["self_bleu"] = self_bleu(tokens, 4, mask)
    return out


def evaluate(ckpt_dir: str | Path, data: str | None, n: int, steps: int | None, solver: str | None, seed: int,
             options: SampleOptions | None = None) -> dict:
    """Metrics of ``n`` samples against the test split (of ``data`` if given, through the
    run's tokenizer): entropy, n-gram JS, Self-BLEU, the data's entropy; gen PPL with
    ``options.evaluator``; markov data: the true chain NLL per token and its expectation."""
    o = options or SampleOptions()
    device = pick_device(o.device)
    cfg, tok, net = restore(ckpt_dir)
    net = net.to(device)
    ref_cfg = cfg if data is None else cfg.replace(data=data)
    if data is not None:
        check_vocabulary(ref_cfg, cfg, tok, "test")  # another vocabulary's tokens would be scored as ours
    _, _, ref = prepare(ref_cfg, tok)
    x = generate(cfg, net, n, steps or cfg.steps, seed, o).cpu()
    eos = None if tok is None else EOS
    out = {**score(x, ref, eos), "data_entropy": sample_entropy(ref),
           "data_entropy_prefix": sample_entropy(ref, first_eos_mask(ref, eos)), "n_samples": n}
    if cfg.data == "markov":
        src = markov_source(cfg)
        out["true_nll"] = float(src.nll(x).mean())
        out["data_true_nll"] = src.expected_nll(x.shape[1])
    if o.evaluator:
        ecfg, etok, ev = restore(o.evaluator)
        ev = ev.to(device)  # token_nll returns the NLL on the CPU
        if ecfg.method != "ar" or ecfg.vocab != cfg.vocab:
            raise ConfigError(f"evaluator: {o.evaluator} must be an 'ar' run with the same vocabulary ({cfg.vocab})")
        out["gen_ppl"] = gen_ppl(token_nll(ev, x), first_eos_mask(x, eos))
        out["evaluator_test_ppl"] = gen_ppl(token_nll(ev, ref), first_eos_mask(ref, eos))
    return out
