"""Run folders (modalities.runs): a rerun into a folder that holds a run never overwrites it
with another one; the trained run stays loadable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modaflow.core.config import ConfigError
from modaflow.core.training import TrainerArgs, checkpoint_path
from modaflow.modalities.runs import RECIPE_FILE, _differences, load_recipe, save_recipe
from modaflow.modalities.toy.recipe import NAME, ToyConfig, sample, train


def _cfg(max_steps: int = 4, hidden: int = 16) -> ToyConfig:
    cfg = ToyConfig(dim=2, n_train=64, n_test=16, hidden=hidden, depth=1, time_embed_dim=8)
    return cfg.replace(fm=cfg.fm.replace(max_steps=max_steps, batch_size=16, log_every=2, ckpt_every=2))


def test_differences_names_dotted_leaves_and_ignores_resumable_fields() -> None:
    old = {"a": 1, "fm": {"lr": 0.1, "max_steps": 10, "log_every": 5}, "shape": [1, 2]}
    assert _differences(old, old) == []
    assert _differences(old, {"a": 1, "fm": {"lr": 0.1, "max_steps": 99, "log_every": 7}, "shape": [1, 2]}) == []
    assert _differences(old, {"a": 2, "fm": {"lr": 0.2, "max_steps": 10, "log_every": 5}, "shape": [1, 3], "b": 0}) == [
        "a", "b", "fm.lr", "shape"]


def test_rerun_resumes_longer_but_refuses_another_run_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = TrainerArgs(accelerator="cpu")
    train(_cfg(max_steps=4), args, out, progress=False)
    assert train(_cfg(max_steps=6), args, out, progress=False)["steps"] == 6  # resume: only how long changed
    recipe, ckpt = (out / RECIPE_FILE).read_bytes(), checkpoint_path(out).read_bytes()

    with pytest.raises(ConfigError, match=r"recipe\.json: .* trained toy run whose recipe differs in hidden; .*finetune"):
        train(_cfg(max_steps=6, hidden=32), args, out, progress=False)  # the model no longer fits the checkpoint
    with pytest.raises(ConfigError, match=r"holds a run of modality 'toy', not 'language'"):
        save_recipe(out, "language", _cfg())
    assert (out / RECIPE_FILE).read_bytes() == recipe and checkpoint_path(out).read_bytes() == ckpt
    assert load_recipe(out, NAME, ToyConfig).hidden == 16
    stored = json.loads((out / RECIPE_FILE).read_text())  # a recipe from an older version, without a newer field:
    del stored["config"]["sample_shift"]                   # its default stands in, so the run still resumes
    (out / RECIPE_FILE).write_text(json.dumps(stored))
    assert train(_cfg(max_steps=8), args, out, progress=False)["steps"] == 8
    assert np.load(sample(out, 5, 4, None, tmp_path / "s.npy", 0)).shape == (5, 2)  # the trained run still samples


def test_recipe_without_a_checkpoint_may_change_and_a_broken_one_is_named(tmp_path: Path) -> None:
    save_recipe(tmp_path, NAME, _cfg(hidden=16))
    save_recipe(tmp_path, NAME, _cfg(hidden=32))  # nothing trained yet: the new recipe replaces it
    assert json.loads((tmp_path / RECIPE_FILE).read_text())["config"]["hidden"] == 32
    (tmp_path / RECIPE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"recipe\.json: not valid JSON"):
        save_recipe(tmp_path, NAME, _cfg())


def test_absolute_source_stores_paths_absolute_and_leaves_dataset_names(tmp_path: Path, monkeypatch) -> None:
    from modaflow.modalities.runs import absolute_source

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "x.csv").write_text("t,a\n0,1\n")
    (tmp_path / "ds").mkdir()
    assert absolute_source("x.csv") == str(tmp_path / "x.csv")
    assert absolute_source("bids:ds", ("bids", "folder")) == f"bids:{tmp_path / 'ds'}"
    assert absolute_source("folder:~/ds", ("bids", "folder")) == f"folder:{tmp_path / 'ds'}"  # a shell leaves ~ here
    assert absolute_source("nwb:ds", ("bids",)) == "nwb:ds"  # not a path prefix of this modality
    assert absolute_source("ds", names=("ds",)) == "ds"  # a dataset name, even where a folder has its name
    assert absolute_source("missing.csv") == "missing.csv"  # no such path: the loader names it
    assert absolute_source("sktime:uschange") == "sktime:uschange"
    assert absolute_source(str(tmp_path / "x.csv")) == str(tmp_path / "x.csv")


def test_a_run_that_stored_a_relative_path_resumes_from_its_folder(tmp_path: Path, monkeypatch) -> None:
    from modaflow.modalities.timeseries.recipe import TimeSeriesConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "series.csv").write_text("t,a\n0,1\n")
    out = tmp_path / "run"
    save_recipe(out, "timeseries", TimeSeriesConfig(data="series.csv"))  # as runs were stored before
    checkpoint_path(out).parent.mkdir(parents=True)
    checkpoint_path(out).write_bytes(b"trained")
    save_recipe(out, "timeseries", TimeSeriesConfig(data=str(tmp_path / "series.csv")))  # the same file: resumes
    assert json.loads((out / RECIPE_FILE).read_text())["config"]["data"] == str(tmp_path / "series.csv")
    (tmp_path / "other.csv").write_text("t,a\n0,1\n")
    with pytest.raises(ConfigError, match="recipe differs in data"):
        save_recipe(out, "timeseries", TimeSeriesConfig(data=str(tmp_path / "other.csv")))
