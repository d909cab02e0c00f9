"""The modality registry: explicit, lazy, with errors that list the known names and name
the extra to install."""

import re

import pytest

from modaflow.modalities import registry as reg
from modaflow.core.config import Config


def test_toy_is_registered_and_complete() -> None:
    assert "toy" in reg.modality_names()
    toy = reg.get_modality("toy")
    assert isinstance(toy, reg.Modality) and toy.name == "toy"
    assert issubclass(toy.config_cls, Config)
    toy.config_cls()  # every recipe field has a default, so `modaflow train toy` works bare
    assert "data" in toy.config_cls.__dataclass_fields__  # the field --data sets
    for fn in (toy.train, toy.sample, toy.evaluate, toy.finetune, toy.bench):
        assert callable(fn)
    assert set(toy.profiles) == {"smoke", "quick", "full", "gpu"}
    assert toy.solvers[0] == toy.config_cls().solver
    assert set(toy.datasets) == {"gaussian", "gmm", "moons", "checkerboard"}
    for name, info in toy.datasets.items():
        assert info.name == name and info.card == f"toy-{name}"


def test_unknown_names_list_the_known_ones() -> None:
    known = ", ".join(repr(n) for n in sorted(reg.MODALITIES))
    with pytest.raises(reg.UnknownNameError, match=re.escape(f"unknown modality 'mri2'; known: [{known}]")):
        reg.get_modality("mri2")
    with pytest.raises(reg.UnknownNameError, match=r"unknown dataset 'spiral' for modality 'toy'; known: \['checkerboard', 'gaussian', 'gmm', 'moons'\]"):
        reg.get_modality("toy").dataset("spiral")


def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path) -> None:
    (tmp_path / "fake_modality.py").write_text("import a_library_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(reg.MODALITIES, "fake", reg.ModalityEntry("fake_modality", "mri"))
    with pytest.raises(reg.ModalityUnavailable, match=r"needs 'a_library_that_is_not_installed'.*pip install modaflow\[mri\]"):
        reg.get_modality("fake")
    # list_datasets skips a modality that cannot be imported instead of failing
    assert {m for m, _ in reg.list_datasets()} == set(reg.MODALITIES) - {"fake"}


def test_a_module_without_a_proper_modality_is_an_error(monkeypatch) -> None:
    monkeypatch.setitem(reg.MODALITIES, "fake", reg.ModalityEntry("modaflow.modalities.toy.data", None))
    with pytest.raises(TypeError, match="MODALITY must be a Modality named 'fake'"):
        reg.get_modality("fake")


def test_registry_is_lazy() -> None:
    import subprocess
    import sys

    code = "import sys, modaflow.modalities.registry as r; print('modaflow.modalities.toy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
