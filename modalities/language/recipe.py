"""The language recipe: typed config, data -> tokenizer -> blocks, which network and training
module each method uses, and the train / sample / evaluate / finetune entry points of the CLI.

Methods (``cfg.method``): ``flm`` (FLM), ``fmlm`` (FLM distilled into a flow map; needs
``teacher``, an FLM run folder, whose tokenizer and model shape it takes), ``mdlm`` (the
masked-diffusion baseline) and ``ar`` (the causal evaluator LM). A run folder holds
``recipe.json``, ``tokenizer.json`` (not for ``markov`` data, whose tokens are the chain's
states) and the core checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from modaflow.core.config import Config, ConfigError
from modaflow.core.devices import DeviceName
from modaflow.core.flow_map_losses import FlowMapLoss, StopGradient
from modaflow.core.flow_maps import FlowMap
from modaflow.core.training import TrainerArgs, checkpoint_path, fit, load_checkpoint

from ..runs import absolute_source, load_recipe, load_weights, save_recipe
from . import data as D
from .evaluator import ARModule, CausalLM, CausalLMConfig
from .flm import FLMConfig, FLMModule
from .fmlm import DenoiserAverageVelocity, FMLMConfig, FMLMModule, student_from_flm
from .markov import MarkovSource
from .mdlm import MDLMModule
from .models import DiT, DiTConfig
from .tokenizer import TokenizerError, TokenizerKind, load_tokenizer, save_tokenizer, train_tokenizer

__all__ = ["LanguageConfig", "SampleOptions", "SOLVERS", "prepare", "check_vocabulary", "markov_source", "build_network", "seeded_network", "build_module",
           "restore", "train", "finetune"]

NAME = "language"
Method = Literal["flm", "fmlm", "mdlm", "ar"]
SOLVERS: tuple[str, ...] = ("euler",)
_SHAPE = ("block_len", "dim", "depth", "heads", "mlp_ratio", "time_table")
_VOCAB = ("tokenizer", "vocab_size", "markov_vocab", "markov_concentration", "vocab")


def _default_fm() -> FLMConfig:
    # FLM's time t (the reparameterized one) logit-normal(0, 1) (Esser et al. 2024, arXiv 2403.03206,
    # eq. 19) instead of uniform: lower validation CE at every t in (0.2, 0.8) and better 8-step gen
    # PPL at the quick budget (benchmarks/language_flm_probe.py; MDLM keeps uniform t, its NELBO's)
    return FLMConfig(lr=1e-3, max_steps=2000, batch_size=32, warmup_steps=50, ema_decay=0.995, log_every=25, ckpt_every=500,
                     time_sampler="logit_normal")


@dataclass
class LanguageConfig(Config):
    """A language run: data, tokenizer, model size, method and training setup."""

    data: str = "shakespeare"
    """shakespeare (embedded, split by work), markov (the exact tier) or a path: a .txt file, a
    folder of .txt/.jsonl files, or a .jsonl file."""
    method: Method = "flm"
    """flm, fmlm (distil a trained FLM: set teacher), mdlm (masked-diffusion baseline) or ar
    (the causal evaluator LM)."""
    teacher: str = ""
    """fmlm: the run folder of the trained FLM to distil (its tokenizer and shape are used)."""
    text_field: str = "text"
    """Field holding the text in JSONL records."""
    paragraphs: bool = True
    """Split documents at blank lines (each paragraph gets its own <bos> ... <eos>)."""
    max_chars: int = 0
    """Keep whole documents up to about this many characters per split (0 = all)."""
    tokenizer: TokenizerKind = "char"
    """bpe (byte-level BPE trained on the train split) or char (one token per character)."""
    vocab_size: int = 512
    """BPE vocabulary size (259 to max_vocab)."""
    max_vocab: int = 32768
    """Largest vocabulary allowed; a larger trained or loaded one is an error."""
    vocab: int = 0
    """The resolved vocabulary K (set when training; 0 before)."""
    markov_vocab: int = 64
    """markov data: number of states V."""
    markov_concentration: float = 0.1
    """markov data: Dirichlet concentration of the transition rows (smaller = lower entropy)."""
    markov_train: int = 4096
    """markov data: training sequences (the test split has a quarter as many)."""
    block_len: int = 128
    """Tokens per block L (the model's longest sequence)."""
    dim: int = 128
    """Transformer width."""
    depth: int = 4
    """Transformer blocks."""
    heads: int = 4
    """Attention heads."""
    mlp_ratio: float = 4.0
    """MLP width as a multiple of dim."""
    time_table: Literal["onehot", "embedded"] = "onehot"
    """FLM/FMLM time table: onehot (the paper's, for x_gamma) or embedded (for the signal-to-noise
    ratio min(dim, K)/K of the one-hot's that the K x dim input projection keeps). Validation
    (benchmarks/language_flm_probe.py, quick text, K = 512, d = 64, seed 0, 64 samples): embedded
    puts half of t at gamma > 0.9 where the token is read off the input (CE 0.01 nats at 0.95)
    and starves the context regime (CE at gamma 0.6 / 0.75: 5.88 / 4.22 vs 4.76 / 3.41 nats);
    FLM@8 gen PPL 1553 vs 709. Kept as an option, not the default."""
    steps: int = 32
    """Default sampler steps (NFE)."""
    fmlm_loss: FlowMapLoss = "progressive"
    """fmlm: the core flow-map loss (progressive self-distillation, lagrangian, eulerian, or
    teacher: regress on the FLM's few-step Euler solution)."""
    fmlm_objective: Literal["ce", "mse"] = "ce"
    """fmlm: ce (KL from the target distribution; progressive and teacher) or mse (residual in
    denoiser units; any loss)."""
    fmlm_stop_gradient: StopGradient = "teacher"
    """fmlm: what the off-diagonal loss detaches (none, teacher, target)."""
    fmlm_teacher_steps: int = 4
    """fmlm, loss teacher: Euler steps of the FLM from s to t."""
    fmlm_grid_fraction: float = 0.5
    """fmlm: share of the off-diagonal (s, t) pairs drawn as adjacent points of a 1, 2, 4 or 8 step
    sampler grid (FMLMConfig.grid_fraction) instead of uniformly. Validation (language_flm_probe,
    quick text, one FLM, 120 progressive steps, 64 samples; gen PPL / entropy): 0 -> FMLM@1
    655 / 2.71, FMLM@4 643 / 3.07; 0.25 -> 711 / 2.92, 642 / 3.02; 0.5 -> 700 / 2.99, 628 / 3.06;
    1 -> 727 / 2.76, 710 / 2.87 (FLM@8 685 / 3.17)."""
    fmlm_grid_steps: tuple[int, ...] = (1, 2, 4, 8)
    """fmlm: step counts of the grids of fmlm_grid_fraction (FMLMConfig.grid_steps; a repeated count
    is drawn more often)."""
    fmlm_hard_final: bool = False
    """fmlm, ce objective: fit the last jump (t = 1) to the target's argmax token (FMLMConfig.hard_final).
    Validation (language_flm_probe, quick text, grid 0.5, 240 steps, 64 samples; FMLM@1 / FMLM@4 gen PPL /
    entropy; validation data entropy 3.31): FLM seed 0: off 668 / 3.01, 611 / 3.03; on 663 / 3.08, 615 / 3.12
    (FLM@8 685 / 3.17); FLM seed 1: off 693 / 3.12, 720 / 3.24; on 745 / 3.11, 663 / 3.21 (FLM@8 808 / 3.21).
    No consistent entropy gain at one step: off by default. Weighting the 1-step grid twice (grid_steps
    (1, 1, 2, 4, 8), seed 0) gave 669 / 3.00, 600 / 3.07: no gain either."""
    fm: FLMConfig = field(default_factory=_default_fm)
    """Training setup (optimiser, steps, batch, seed; FLM's fast input and chunked CE) of
    every method; for fmlm it is the distillation run's."""

    def __post_init__(self) -> None:
        if self.method == "mdlm" and isinstance(self.fm, FLMConfig) and self.fm.time_sampler != "uniform":
            # MDLM's NELBO (arXiv 2406.07524, eq. 10) is an expectation over uniform t, which the module
            # always draws; set here so recipe.json records what trains (FLM's default is logit-normal)
            self.fm = self.fm.replace(time_sampler="uniform")
        super().__post_init__()

    def distill_config(self) -> FMLMConfig:
        """The core flow-map config of an fmlm run: ``fm``'s optimiser fields plus the fmlm_* ones."""
        base = {k: v for k, v in self.fm.to_dict().items() if k not in ("fast_input", "ce_chunk", "compile")}
        return FMLMConfig.from_dict({**base, "loss": self.fmlm_loss, "objective": self.fmlm_objective,
                                     "stop_gradient": self.fmlm_stop_gradient, "teacher_steps": self.fmlm_teacher_steps,
                                     "grid_fraction": self.fmlm_grid_fraction, "grid_steps": tuple(self.fmlm_grid_steps),
                                     "hard_final": self.fmlm_hard_final})

    def validate(self) -> None:
        self._require(bool(self.data), "data", "shakespeare, markov or a path")
        if self.method == "fmlm":
            self._require(bool(self.teacher), "teacher", "the run folder of a trained FLM (method fmlm)")
        for name in ("block_len", "dim", "depth", "heads", "steps", "max_vocab", "markov_train"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.max_chars >= 0 and self.vocab >= 0, "max_chars", "an integer >= 0")
        self._require(2 <= self.markov_vocab <= 4096, "markov_vocab", "an integer in [2, 4096]")
        self._require(self.markov_concentration > 0, "markov_concentration", "a number > 0")
        if self.fmlm_objective == "ce":
            self._require(self.fmlm_loss in ("progressive", "teacher"), "fmlm_objective",
                          "'mse' for the lagrangian and eulerian losses (their targets are not distributions)")


@dataclass
class SampleOptions(Config):
    """Extra options of ``sample language`` and ``evaluate language``."""

    temperature: float = -1.0
    """Temperature of the last step (FLM/FMLM) or of every reveal (MDLM); 0 = argmax; -1 = the
    method's default (argmax for FLM/FMLM, 1 for MDLM)."""
    top_p: float = 1.0
    """Nucleus mass of the draw (1 = no truncation)."""
    length: int = 0
    """Tokens per sample (0 = the model's block_len; longer than it is an error)."""
    evaluator: str = ""
    """evaluate: the run folder of a trained 'ar' model for generative perplexity (same
    tokenizer); empty: no gen PPL (markov data is scored by the true chain)."""
    device: DeviceName = "auto"
    """Where the networks run: auto (a GPU when torch sees one), cpu or cuda; the noise is drawn
    from the same seed on every device."""

    def validate(self) -> None:
        self._require(self.temperature >= 0 or self.temperature == -1, "temperature", "a number >= 0, or -1")
        self._require(0 < self.top_p <= 1, "top_p", "a number in (0, 1]")
        self._require(self.length >= 0, "length", "an integer >= 0")


def markov_source(cfg: LanguageConfig) -> MarkovSource:
    return MarkovSource(cfg.markov_vocab, cfg.markov_concentration, seed=1234)


def prepare(cfg: LanguageConfig, tok=None) -> tuple[object | None, Tensor, Tensor]:
    """``(tokenizer or None, train blocks, test blocks)``, blocks ``(N, L)`` int64. The
    tokenizer is trained on the train split unless given."""
    if cfg.data == "markov":
        src, n = markov_source(cfg), cfg.markov_train
        return None, src.sample(n, cfg.block_len, seed=1), src.sample(max(1, n // 4), cfg.block_len, seed=2)
    train_docs = D.load_corpus(cfg.data, "train", cfg.text_field, cfg.paragraphs, cfg.max_chars)
    test_docs = D.load_corpus(cfg.data, "test", cfg.text_field, cfg.paragraphs, cfg.max_chars)
    if tok is None:
        tok = train_tokenizer(train_docs, cfg.tokenizer, cfg.vocab_size, cfg.max_vocab)
    blocks = []
    for split, docs in (("train", train_docs), ("test", test_docs)):
        try:
            blocks.append(D.pack(docs, tok, cfg.block_len))
        except D.CorpusError as e:  # the test split is the last 10%: say which part is short
            raise D.CorpusError(f"{cfg.data}: its {split} split: {e}; give more text or a shorter --block-len") from None
    return tok, blocks[0], blocks[1]


def check_vocabulary(cfg: LanguageConfig, base: LanguageConfig, tok, split: str) -> None:
    """``cfg.data`` must speak the vocabulary of the run ``base`` (tokenizer ``tok``): Markov
    states against Markov states, text against text, and with a char tokenizer no character
    it lacks (the ``split`` read is checked); else :class:`TokenizerError` naming the data."""
    if (cfg.data == "markov") != (base.data == "markov"):
        raise TokenizerError(f"data {cfg.data!r}: the checkpoint's vocabulary is "
                             f"{'Markov states' if base.data == 'markov' else 'a text tokenizer'}; the data does not match it")
    if tok is not None and base.tokenizer == "char":
        text = "".join(D.load_corpus(cfg.data, split, cfg.text_field, cfg.paragraphs, cfg.max_chars))
        unknown = sorted(set(text) - set(tok.get_vocab()))
        if unknown:
            raise TokenizerError(f"{cfg.data}: characters {unknown[:20]} are not in the checkpoint's character vocabulary "
                                 f"({base.vocab} tokens): the vocabularies do not match")


def vocab_of(cfg: LanguageConfig, tok) -> int:
    return cfg.markov_vocab if tok is None else tok.get_vocab_size()


def build_network(cfg: LanguageConfig) -> nn.Module:
    """The network of ``cfg.method`` for vocabulary ``cfg.vocab``."""
    if cfg.vocab < 2:
        raise ConfigError("vocab: the resolved vocabulary size must be set (>= 2) before building a model")
    shape = dict(vocab_size=cfg.vocab, block_len=cfg.block_len, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads)
    if cfg.method == "ar":
        return CausalLM(CausalLMConfig(**shape))
    if cfg.method == "mdlm":
        return DiT(DiTConfig(**shape, mlp_ratio=cfg.mlp_ratio, input="tokens", reparam=False))
    dit = DiT(DiTConfig(**shape, mlp_ratio=cfg.mlp_ratio, two_time=cfg.method == "fmlm", time_table=cfg.time_table))
    return FlowMap(DenoiserAverageVelocity(dit)) if cfg.method == "fmlm" else dit


def build_module(cfg: LanguageConfig, net: nn.Module, teacher: DiT | None = None):
    """The Lightning module training ``net`` by ``cfg.method``."""
    if cfg.method == "flm":
        return FLMModule(net, cfg.fm)
    if cfg.method == "mdlm":
        return MDLMModule(net, cfg.fm)
    if cfg.method == "ar":
        return ARModule(net, cfg.fm)
    return FMLMModule(net, cfg.distill_config(), teacher=teacher)


def _load_tok(ckpt_dir: str | Path, cfg: LanguageConfig):
    if cfg.data == "markov":
        return None
    tok = load_tokenizer(ckpt_dir, expected_vocab=cfg.vocab)
    if tok.get_vocab_size() > cfg.max_vocab:
        raise TokenizerError(f"{ckpt_dir}/tokenizer.json: {tok.get_vocab_size()} tokens exceed max_vocab = {cfg.max_vocab}")
    return tok


def restore(ckpt_dir: str | Path) -> tuple[LanguageConfig, object | None, nn.Module]:
    """``(recipe, tokenizer or None, network with EMA weights, eval mode)`` of a run folder;
    a tokenizer whose vocabulary differs from the model's is an error."""
    cfg = load_recipe(ckpt_dir, NAME, LanguageConfig)
    tok = _load_tok(ckpt_dir, cfg)
    net = build_network(cfg)
    load_weights(ckpt_dir, net, use_ema=True)
    return cfg, tok, net.eval()


def _teacher(cfg: LanguageConfig) -> tuple[LanguageConfig, object | None, DiT]:
    tcfg, tok, teacher = restore(cfg.teacher)
    if tcfg.method != "flm":
        raise ConfigError(f"teacher: {cfg.teacher} is a {tcfg.method!r} run; fmlm distils an 'flm' run")
    return tcfg, tok, teacher


def _stored_data(data: str) -> str:
    """``--data`` as a run stores it: a file or folder by absolute path, the named corpora as they are."""
    return absolute_source(data, names=("shakespeare", "markov"))


def train(cfg: LanguageConfig, trainer_args: TrainerArgs, out_dir: str | Path, progress: bool = True) -> dict:
    """Train ``cfg.method`` into ``out_dir`` (resumes if it holds a checkpoint); returns
    ``{"steps", "final_loss", "checkpoint", "history"}``."""
    out = Path(out_dir)
    teacher = None
    if cfg.method == "fmlm":  # the student takes the teacher's data, tokenizer and shape
        tcfg, tok, teacher = _teacher(cfg)
        cfg = cfg.replace(**{k: getattr(tcfg, k) for k in ("data", "text_field", "paragraphs", "max_chars", *_VOCAB, *_SHAPE)})
        tok, blocks, _ = prepare(cfg, tok)
    else:
        tok, blocks, _ = prepare(cfg)
    cfg = cfg.replace(vocab=vocab_of(cfg, tok), data=_stored_data(cfg.data))
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(out, NAME, cfg)  # refuses a folder holding another run before anything is written
    if tok is not None:
        save_tokenizer(tok, out)
    net = seeded_network(cfg)
    if teacher is not None and not checkpoint_path(out).exists():
        with torch.random.fork_rng(devices=[]):  # the student's new two-time branch from fm.seed too
            torch.manual_seed(cfg.fm.seed)
            net = student_from_flm(teacher)
    return _fit(build_module(cfg, net, teacher), cfg, blocks, trainer_args, out, progress)


def seeded_network(cfg: LanguageConfig) -> nn.Module:
    """:func:`build_network` with its initial weights drawn from ``cfg.fm.seed`` in a forked RNG
    (the global RNG's state before training, e.g. after tokenizer training, must not change them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.fm.seed)
        return build_network(cfg)


def _fit(module, cfg: LanguageConfig, blocks: Tensor, trainer_args: TrainerArgs, out: Path, progress: bool) -> dict:
    res = fit(module, D.block_loader(blocks, cfg.fm.batch_size, cfg.fm.seed), out, trainer_args, progress=progress)
    final = res.history[-1][1] if res.history else math.nan
    return {"steps": res.step, "final_loss": final, "checkpoint": str(res.checkpoint), "history": res.history}


def finetune(ckpt_dir: str | Path, data: str, out_dir: str | Path, overrides: dict, trainer_args: TrainerArgs,
             progress: bool = True) -> dict:
    """Continue training the run ``ckpt_dir`` on ``data`` into ``out_dir`` with its tokenizer
    (copied) and weights. Changing the tokenizer, vocabulary or model shape is an error, as
    is text with characters a char vocabulary lacks."""
    base = load_recipe(ckpt_dir, NAME, LanguageConfig)
    merged = base.to_dict()
    for key, value in overrides.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    cfg = LanguageConfig.from_dict({**merged, "data": _stored_data(data)})
    for name in (*_VOCAB, *_SHAPE, "method"):
        if getattr(cfg, name) != getattr(base, name):
            longer = ", longer than the model's" if name == "block_len" and cfg.block_len > base.block_len else ""
            raise ConfigError(f"finetune cannot change {name}: the checkpoint {ckpt_dir} has {getattr(base, name)}, got "
                              f"{getattr(cfg, name)}{longer} (the tokenizer and model shape are kept)")
    tok = _load_tok(ckpt_dir, base)
    check_vocabulary(cfg, base, tok, "train")
    _, blocks, _ = prepare(cfg, tok)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(out, NAME, cfg)
    if tok is not None:
        save_tokenizer(tok, out)
    teacher = _teacher(cfg)[2] if cfg.method == "fmlm" and cfg.fmlm_loss == "teacher" else None
    module = build_module(cfg, seeded_network(cfg), teacher)
    if not checkpoint_path(out).exists():
        load_checkpoint(checkpoint_path(ckpt_dir), module.model, ema=module.ema)
    return _fit(module, cfg, blocks, trainer_args, out, progress)
