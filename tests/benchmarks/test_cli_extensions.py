"""A modality's own CLI surface: ``sample_options`` become options of ``sample`` and
``evaluate`` and reach them as a typed config; ``commands`` become subcommands with their
own options. Exercised on a small modality built here from the toy one (same callables,
plus recording wrappers), registered for the duration of each test."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

import modaflow.benchmarks.cli as cli
from modaflow.core.config import Config
from modaflow.modalities import registry
from modaflow.modalities.registry import ModalityCommand, get_modality


@dataclass
class EchoOptions(Config):
    direction: Literal["encode", "decode"] = "encode"
    """Which way to integrate."""
    temperature: float = 1.0
    """Softmax temperature of the last step."""


@dataclass
class SteerConfig(Config):
    beta: float
    """Gate strength (required: no default)."""
    layers: tuple[str, ...] = ("block0",)
    """Layers to hook."""


@pytest.fixture
def echo(monkeypatch):
    calls: dict[str, object] = {}

    def sample(ckpt_dir, n, steps, solver, out_path, seed, options):
        calls["sample"] = options
        Path(out_path).write_text(json.dumps(options.to_dict()))
        return Path(out_path)

    def evaluate(ckpt_dir, data, n, steps, solver, seed, options):
        calls["evaluate"] = options
        return {"temperature": options.temperature}

    def steer(cfg, out_dir):
        calls["steer"] = (cfg, out_dir)
        return {"beta": cfg.beta, "layers": list(cfg.layers)}

    toy = get_modality("toy")
    echo = dataclasses.replace(
        toy, name="echo", sample=sample, evaluate=evaluate, sample_options=EchoOptions,
        commands={"steer": ModalityCommand("fit and apply a steering gate", SteerConfig, steer)},
    )
    monkeypatch.setitem(registry.MODALITIES, "echo", registry.ModalityEntry("modaflow.modalities.toy", None))
    monkeypatch.setattr(cli, "get_modality", lambda name: echo if name == "echo" else get_modality(name))
    return calls


def test_sample_options_reach_sample_and_evaluate_typed(echo, tmp_path, capsys) -> None:
    out = tmp_path / "s.json"
    assert cli.main(["sample", "echo", "--ckpt", str(tmp_path), "--out", str(out),
                     "--direction", "decode", "--temperature", "0.5"]) == 0
    assert echo["sample"] == EchoOptions(direction="decode", temperature=0.5)
    assert json.loads(out.read_text()) == {"direction": "decode", "temperature": 0.5}
    assert cli.main(["evaluate", "echo", "--ckpt", str(tmp_path)]) == 0
    assert echo["evaluate"] == EchoOptions()  # defaults when no option is given
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == {"temperature": 1.0}


def test_sample_option_errors_name_the_option(echo, tmp_path, capsys) -> None:
    assert cli.main(["sample", "echo", "--ckpt", str(tmp_path), "--out", "x", "--direction", "up"]) == 2
    assert "argument --direction: invalid choice: 'up'" in capsys.readouterr().err
    assert cli.main(["sample", "toy", "--ckpt", str(tmp_path), "--out", "x", "--direction", "up"]) == 2
    assert "unrecognized arguments: --direction up" in capsys.readouterr().err  # toy has no such option


def test_modality_command_runs_with_its_own_options(echo, tmp_path, capsys) -> None:
    assert cli.main(["steer", "echo", "--beta", "0.25", "--layers", "a", "b", "--out", str(tmp_path)]) == 0
    cfg, out_dir = echo["steer"]
    assert cfg == SteerConfig(beta=0.25, layers=("a", "b")) and out_dir == tmp_path
    assert json.loads(capsys.readouterr().out) == {"beta": 0.25, "layers": ["a", "b"]}


def test_modality_command_errors(echo, capsys) -> None:
    assert cli.main(["steer", "echo"]) == 2  # a required field left out
    err = capsys.readouterr().err
    assert "SteerConfig: missing required field(s) ['beta']" in err and "\n" not in err.strip()
    assert cli.main(["steer", "toy", "--beta", "1"]) == 2  # toy has no steer command
    assert "invalid choice: 'steer'" in capsys.readouterr().err
