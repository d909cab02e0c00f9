"""The README opens with the two set-up commands, and .ci/run runs the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    fence = [i for i, line in enumerate(lines) if line.startswith("```")]
    assert len(fence) >= 2, "README must open with a fenced block of the two commands"
    block = [line.strip() for line in lines[fence[0] + 1 : fence[1]]]
    return [line for line in block if line and not line.startswith("#")]


def test_readme_opens_with_two_commands() -> None:
    cmds = _commands()
    assert len(cmds) == 2, cmds
    bench, test = cmds
    assert "modaflow bench all --profile quick" in bench
    assert "pytest" in test
    for cmd in cmds:
        assert cmd.startswith("pip install torch==2.13.0 && "), "torch must be installed first (REFERENCE §0)"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _commands()[1] in [line.strip() for line in ci]


def _example_lines() -> list[str]:
    """Every ``modaflow ...`` example, a command continued with ``\\`` joined into one line."""
    lines, pending = [], ""
    for line in (ROOT / "README.md").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].strip()
        elif line.startswith("modaflow "):
            lines.append(line)
    return lines


def test_readme_examples_parse() -> None:
    """Every `modaflow ...` example in the README names options that exist."""
    import shlex

    from modaflow.benchmarks.cli import build_parser
    from modaflow.modalities.registry import get_modality, modality_names

    examples = _example_lines()
    assert len(examples) >= 10
    assert any("--attention-levels false false false false true" in line for line in examples)  # a continued one
    for line in examples:
        argv = shlex.split(line)[1:]
        modality = get_modality(argv[1]) if len(argv) > 1 and argv[1] in modality_names() else None
        try:
            build_parser(modality).parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"README example does not parse: {line}") from e
