"""Every registered dataset has a data card whose front matter parses, has the required
keys, and declares what the loader returns."""

import pytest

from modaflow.data_cards import REQUIRED_KEYS, CardError, card_ids, load_card, parse_front_matter
from modaflow.modalities.registry import list_datasets

DATASETS = list_datasets()


@pytest.mark.parametrize("modality,info", DATASETS, ids=[f"{m}-{i.name}" for m, i in DATASETS])
def test_loader_returns_what_the_card_declares(modality, info) -> None:
    card = load_card(info.card)
    assert card.meta["modality"] == modality
    assert set(REQUIRED_KEYS) <= set(card.meta)
    for split, size in zip(card.meta["splits"], card.meta["split_sizes"]):
        ds = info.load(split, 0)
        assert len(ds) == size, f"{info.card}: split {split} has {len(ds)} items, the card says {size}"
        assert list(ds[0].shape) == card.meta["item_shape"]


def test_every_card_belongs_to_a_registered_dataset() -> None:
    assert sorted(info.card for _, info in DATASETS) == card_ids()


def test_parser_reads_the_subset_and_matches_pyyaml_where_installed() -> None:
    text = '---\n# comment\nid: x\nn: 3\nr: 2.5\nq: "a: b"\nl: [a, 2, 3.5]\ne: []\nna: n/a\n---\n# Body\n'
    meta, body = parse_front_matter(text, "t.md")
    assert meta == {"id": "x", "n": 3, "r": 2.5, "q": "a: b", "l": ["a", 2, 3.5], "e": [], "na": "n/a"}
    assert body == "# Body\n"
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(text.split("---")[1]) == meta
    for card_id in card_ids():
        from importlib.resources import files

        raw = (files("modaflow.data_cards") / f"{card_id}.md").read_text()
        assert yaml.safe_load(raw.split("---\n")[1]) == load_card(card_id).meta


@pytest.mark.parametrize(
    "text,message",
    [
        ("id: x\n", "must start with a '---' line"),
        ("---\nid: x\n", "not closed"),
        ("---\nid x\n---\n", "line 2: expected 'key: value'"),
        ("---\na: 1\na: 2\n---\n", "line 3: duplicate key 'a'"),
        ("---\na: [1, 2\n---\n", "line 2: a list must close"),
    ],
)
def test_parser_errors_name_the_card_and_line(text, message) -> None:
    with pytest.raises(CardError, match=message):
        parse_front_matter(text, "bad.md")


def test_missing_card_lists_the_known_ones() -> None:
    with pytest.raises(CardError, match="no data card 'nope'"):
        load_card("nope")
