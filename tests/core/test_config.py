"""Typed configs: type checks and range checks name the field; JSON round trips;
unknown or missing keys are refused; field docstrings are readable."""

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from modaflow.core.config import Config, ConfigError, field_docs


@dataclass
class Inner(Config):
    width: int = 8
    """Hidden width."""

    def validate(self) -> None:
        self._require(self.width > 0, "width", "a positive integer")


@dataclass
class Outer(Config):
    name: str
    """A required name."""
    lr: float = 1e-3
    """Learning rate."""
    solver: Literal["euler", "rk4"] = "euler"
    """Which solver."""
    sizes: tuple[int, ...] = (1, 2)
    """Some sizes."""
    inner: Inner = field(default_factory=Inner)
    """A nested config."""
    tag: str | None = None


def test_round_trip_json(tmp_path) -> None:
    cfg = Outer(name="a", lr=2, sizes=[3, 4], inner={"width": 5})
    assert cfg.lr == 2.0 and isinstance(cfg.lr, float)
    assert cfg.sizes == (3, 4) and cfg.inner == Inner(5)
    cfg.to_json(tmp_path / "c.json")
    assert Outer.from_json(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text())["inner"] == {"width": 5}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "a", "lr": "fast"}, r"Outer\.lr: expected a number"),
        ({"name": "a", "solver": "rk5"}, r"Outer\.solver: expected one of \['euler', 'rk4'\]"),
        ({"name": "a", "sizes": [1, "x"]}, r"Outer\.sizes\[1\]: expected an integer"),
        ({"name": "a", "inner": {"width": 0}}, r"Inner\.width: expected a positive integer, got 0"),
        ({"name": "a", "inner": {"depth": 2}}, r"Outer\.inner: unknown field\(s\) \['depth'\]"),
        ({"name": "a", "learning_rate": 1}, r"unknown field\(s\) \['learning_rate'\]"),
        ({"lr": 1.0}, r"missing required field\(s\) \['name'\]"),
        ({"name": 3}, r"Outer\.name: expected a string"),
        ({"name": "a", "lr": True}, r"Outer\.lr: expected a number"),
    ],
)
def test_bad_fields_are_named(data, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Outer.from_dict(data)


def test_bad_file_is_named(tmp_path) -> None:
    p = tmp_path / "cfg.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match=r"cfg\.json: not valid JSON"):
        Outer.from_json(p)
    p.write_text(json.dumps({"name": "a", "lr": []}))
    with pytest.raises(ConfigError, match=r"cfg\.json: Outer\.lr: expected a number"):
        Outer.from_json(p)
    with pytest.raises(ConfigError, match="config file not found"):
        Outer.from_json(tmp_path / "missing.json")


def test_replace_validates() -> None:
    with pytest.raises(ConfigError, match="Inner.width"):
        Inner().replace(width=-1)


def test_field_docs() -> None:
    docs = field_docs(Outer)
    assert docs["lr"] == "Learning rate."
    assert docs["inner"] == "A nested config."
    assert docs["tag"] == ""


def test_fixed_length_tuple_fields_coerce_each_item_to_its_type() -> None:
    from dataclasses import dataclass

    @dataclass
    class Shape(Config):
        size: tuple[int, int, float] = (1, 2, 3.0)
        """Two integers and a float."""

    assert Shape.from_dict({"size": [4, 5, 6]}).size == (4, 5, 6.0)
    s = Shape(size=(7, 8, 0.5))
    assert Shape.from_dict(s.to_dict()) == s
    with pytest.raises(ConfigError, match=r"Shape.size\[1\]"):
        Shape.from_dict({"size": [1, "x", 2.0]})
    with pytest.raises(ConfigError, match="expected 3 items, got 2"):
        Shape.from_dict({"size": [1, 2]})
