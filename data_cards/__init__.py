"""Data cards: one Markdown file per dataset, ``<id>.md``, opening with YAML front matter.

The front matter uses a small, safe subset of YAML that :func:`parse_front_matter` reads
without PyYAML (which is not a dependency): one ``key: value`` per line, where a value is
a number, a string (optionally in double quotes), or a flow list of those (``[a, 2, 3.5]``).
Lines starting with ``#`` are comments. Anything else is an error naming the card and line.

Required keys: see :data:`REQUIRED_KEYS`. ``item_shape`` (shape of one loaded item at the
loader's default size) and ``split_sizes`` (one per entry of ``splits``) are checked
against the registered loader by the test suite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

__all__ = ["DataCard", "CardError", "REQUIRED_KEYS", "parse_front_matter", "load_card", "card_ids"]

REQUIRED_KEYS: tuple[str, ...] = (
    "id", "title", "modality", "source", "license", "shapes", "item_shape", "units",
    "sampling_rate", "splits", "split_sizes", "preprocessing", "caveats",
)
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(?:\s+(.*))?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)$")


class CardError(ValueError):
    """A data card is missing, malformed or lacks a required key."""


@dataclass(frozen=True)
class DataCard:
    """A parsed card: ``meta`` is the front matter, ``body`` the Markdown after it."""

    id: str
    meta: dict[str, Any]
    body: str

    def summary(self) -> str:
        """One line: title, shapes and license."""
        m = self.meta
        return f"{m['title']} | {m['shapes']} | license: {m['license']}"


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    if _NUMBER.match(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    return text


def _value(text: str, where: str) -> Any:
    text = text.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise CardError(f"{where}: a list must close with ']' on the same line")
        inner = text[1:-1].strip()
        return [_scalar(item) for item in inner.split(",")] if inner else []
    return _scalar(text)


def parse_front_matter(text: str, name: str = "<card>") -> tuple[dict[str, Any], str]:
    """Split a card into ``(front matter dict, Markdown body)``; errors name ``name``."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise CardError(f"{name}: a data card must start with a '---' line (YAML front matter)")
    meta: dict[str, Any] = {}
    for i, line in enumerate(lines[1:], start=2):
        if line.strip() == "---":
            return meta, "\n".join(lines[i:]).strip() + "\n"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _KEY.match(line)
        if match is None or match.group(2) is None:
            raise CardError(f"{name}, line {i}: expected 'key: value', got {line!r}")
        key = match.group(1)
        if key in meta:
            raise CardError(f"{name}, line {i}: duplicate key {key!r}")
        meta[key] = _value(match.group(2), f"{name}, line {i}")
    raise CardError(f"{name}: front matter is not closed by a '---' line")


def card_ids() -> list[str]:
    """Ids of every card shipped with the package, sorted."""
    return sorted(p.name[:-3] for p in files(__name__).iterdir() if p.name.endswith(".md"))


def load_card(card_id: str) -> DataCard:
    """Read and check the card ``<card_id>.md``."""
    resource = files(__name__) / f"{card_id}.md"
    if not resource.is_file():
        raise CardError(f"no data card {card_id!r} (expected data_cards/{card_id}.md); known: {card_ids()}")
    name = f"data_cards/{card_id}.md"
    meta, body = parse_front_matter(resource.read_text(encoding="utf-8"), name)
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CardError(f"{name}: missing required key(s) {missing}")
    if meta["id"] != card_id:
        raise CardError(f"{name}: id {meta['id']!r} must equal the file name {card_id!r}")
    if not isinstance(meta["splits"], list) or not isinstance(meta["split_sizes"], list) or len(meta["splits"]) != len(meta["split_sizes"]):
        raise CardError(f"{name}: 'splits' and 'split_sizes' must be lists of one length")
    return DataCard(card_id, meta, body)
