"""Tokenizers built with HuggingFace ``tokenizers``: a byte-level BPE of a chosen vocabulary
size trained on the training split, or a character vocabulary. Both reserve the special
tokens ``<bos>`` (id 0), ``<eos>`` (id 1) and ``<unk>`` (id 2). The tokenizer's JSON is
saved in the run folder beside the model (``tokenizer.json``) and reloaded with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from modaflow.core.io import atomic_write_text

__all__ = ["TokenizerKind", "SPECIALS", "BOS", "EOS", "UNK", "MIN_BPE_VOCAB", "TokenizerError",
           "train_tokenizer", "save_tokenizer", "load_tokenizer", "check_vocab", "TOKENIZER_FILE"]

TokenizerKind = Literal["bpe", "char"]
SPECIALS: tuple[str, ...] = ("<bos>", "<eos>", "<unk>")
BOS, EOS, UNK = 0, 1, 2
MIN_BPE_VOCAB = 256 + len(SPECIALS)
"""A byte-level BPE holds the 256 bytes and the specials before any merge."""
TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(ValueError):
    """A tokenizer that cannot be built, read, or does not fit the model or the limit."""


def _tk():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - the extra brings it
        raise ImportError("the language modality needs 'tokenizers': pip install modaflow[language]") from e
    return tokenizers


def _char_tokenizer(texts: Iterable[str]):
    tk = _tk()
    chars = sorted(set().union(*(set(t) for t in texts)))
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = tk.Tokenizer(tk.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tok.decoder = tk.decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))  # already in the vocabulary: marks them special (skipped in decode)
    return tok


def _bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    tk = _tk()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def train_tokenizer(texts: Sequence[str], kind: TokenizerKind, vocab_size: int, max_vocab: int):
    """A ``tokenizers.Tokenizer`` trained on ``texts`` (the training split only).

    ``kind="bpe"``: byte-level BPE with at most ``vocab_size`` tokens (fewer if the corpus has
    fewer merges); ``kind="char"``: one token per distinct character. Raises
    :class:`TokenizerError` if the vocabulary would exceed ``max_vocab``."""
    if kind == "bpe":
        if vocab_size < MIN_BPE_VOCAB:
            raise TokenizerError(f"vocab_size: a byte-level BPE needs at least {MIN_BPE_VOCAB} tokens; got {vocab_size}")
        if vocab_size > max_vocab:
            raise TokenizerError(f"vocab_size {vocab_size} is larger than the configured limit max_vocab = {max_vocab}")
        tok = _bpe_tokenizer(texts, vocab_size)
    elif kind == "char":
        tok = _char_tokenizer(texts)
    else:
        raise TokenizerError(f"tokenizer must be 'bpe' or 'char'; got {kind!r}")
    check_vocab(tok, max_vocab, "the trained tokenizer")
    return tok


def check_vocab(tok, max_vocab: int, where: str) -> int:
    """The vocabulary size of ``tok``; :class:`TokenizerError` if it is above ``max_vocab`` or
    the special tokens are not at their ids."""
    size = tok.get_vocab_size()
    if size > max_vocab:
        raise TokenizerError(f"{where}: vocabulary of {size} tokens is larger than the configured limit max_vocab = {max_vocab}")
    for i, s in enumerate(SPECIALS):
        if tok.token_to_id(s) != i:
            raise TokenizerError(f"{where}: special token {s!r} must have id {i}; got {tok.token_to_id(s)}")
    return size


def save_tokenizer(tok, run_dir: str | Path) -> Path:
    """Write ``run_dir/tokenizer.json`` atomically; returns the path."""
    path = Path(run_dir) / TOKENIZER_FILE
    atomic_write_text(path, tok.to_str(pretty=False))
    return path


def load_tokenizer(run_dir: str | Path, expected_vocab: int | None = None):
    """Read ``run_dir/tokenizer.json``; with ``expected_vocab`` (the model's vocabulary), a
    different size is a checkpoint/tokenizer mismatch (:class:`TokenizerError`)."""
    path = Path(run_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise TokenizerError(f"{path}: not found; a language run folder holds its tokenizer beside the model")
    try:
        tok = _tk().Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise TokenizerError(f"{path}: not a tokenizers JSON file ({e})") from None
    size = tok.get_vocab_size()
    if expected_vocab is not None and size != expected_vocab:
        raise TokenizerError(f"{path}: the tokenizer has {size} tokens but the checkpoint's model has a "
                             f"vocabulary of {expected_vocab}: checkpoint and tokenizer do not match")
    return tok
