"""The package maps every folder with an __init__.py into the modaflow namespace, and
the core imports with torch and numpy alone."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> set[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(cfg["packages"]), cfg["package-dir"]


def test_every_package_folder_is_declared() -> None:
    packages, mapping = _declared()
    found = set()
    for name, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
        if not (base / "__init__.py").exists():
            found.add(name)  # a data-only folder (data_cards) is a namespace package
    assert found == packages, f"pyproject packages differ: missing {found - packages}, extra {packages - found}"


def test_core_imports_without_optional_dependencies() -> None:
    """Importing every core module must not import matplotlib, torchdiffeq or lightning
    extras lazily needed elsewhere."""
    code = (
        "import sys, pkgutil, importlib, modaflow.core as c\n"
        "def walk(path, prefix):\n"
        "    for m in pkgutil.iter_modules(path, prefix):\n"
        "        if m.name.endswith('.training'): continue  # needs lightning, by design\n"
        "        mod = importlib.import_module(m.name)\n"
        "        if m.ispkg: walk(mod.__path__, m.name + '.')\n"
        "walk(c.__path__, 'modaflow.core.')\n"
        "bad = [m for m in ('matplotlib', 'torchdiffeq', 'scipy', 'sklearn', 'lightning', 'geomloss', 'ot') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imported optional packages: {out.stdout}"
