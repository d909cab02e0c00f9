"""Benchmark harness and report: metadata, results.json round trip, confidence intervals
against scipy, the report and its plots."""

import json
import subprocess

import pytest
import scipy.stats
import torch

from modaflow.benchmarks import harness as H
from modaflow.benchmarks import report as R


def _result(**over) -> H.BenchResult:
    parts = dict(
        metrics={"sw": 0.12, "energy": {"mean": 0.05, "ci95": 0.01, "n": 3}},
        baselines={"ddim": {"sw": 0.2}},
        timings={"total_s": 1.5, "solver_overhead_ratio": 1.02},
        curves={"err": {"xlabel": "NFE", "ylabel": "error", "series": {"euler": {"x": [1, 2, 4], "y": [1.0, 0.5, 0.25]}}}},
    )
    parts.update(over)
    return H.BenchResult.create("toy", "smoke", 7, **parts)


@pytest.mark.parametrize("n", [2, 5, 31, 32, 40, 200])
def test_mean_ci95_matches_scipy_t_interval(n: int) -> None:
    vals = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64).tolist()
    got = H.mean_ci95(vals)
    lo, hi = scipy.stats.t.interval(0.95, n - 1, loc=got["mean"], scale=scipy.stats.sem(vals))
    assert got["n"] == n
    assert got["mean"] == pytest.approx(sum(vals) / n, rel=1e-12)
    # the table has 3 decimals (df <= 30); beyond it a series in 1/df
    assert got["ci95"] == pytest.approx((hi - lo) / 2, rel=2e-4)


def test_mean_ci95_of_one_value_and_of_none() -> None:
    assert H.mean_ci95([3.0]) == {"mean": 3.0, "ci95": 0.0, "n": 1}
    with pytest.raises(ValueError, match="at least one"):
        H.mean_ci95([])


def test_git_commit_of_a_checkout_and_outside_one(tmp_path) -> None:
    assert H.git_commit(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), *env, "commit", "-qm", "m"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert H.git_commit(tmp_path) == head
    (tmp_path / "f").write_text("y")
    assert H.git_commit(tmp_path) == head + "+dirty"


def test_metadata_has_hardware_and_versions() -> None:
    meta = H.run_metadata()
    assert set(meta) == {"commit", "hardware", "versions"}
    assert meta["hardware"]["cores"] >= 1 and meta["hardware"]["cpu"]
    assert meta["versions"]["torch"] == torch.__version__
    assert set(meta["versions"]) == {"python", "torch", "lightning", "numpy", "modaflow"}


def test_results_json_round_trip_and_required_keys(tmp_path) -> None:
    res = _result()
    path = res.write(tmp_path)
    data = json.loads(path.read_text())
    assert set(H.REQUIRED_KEYS) <= set(data)
    assert data["metrics"]["energy"] == {"mean": 0.05, "ci95": 0.01, "n": 3}
    assert H.BenchResult.read(path) == res
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind
    del data["timings"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"results.json: missing key\(s\) \['timings'\]"):
        H.BenchResult.read(path)


def test_median_times_calls_each_function_interleaved() -> None:
    calls = []
    out = H.median_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
    assert calls == ["a", "b"] * 4  # one warm-up each, then 3 interleaved rounds


def test_progress_yields_every_item() -> None:
    assert list(H.progress(range(5), "x")) == [0, 1, 2, 3, 4]
    assert list(H.progress(iter("ab"), "x", enable=False)) == ["a", "b"]


def _lines(err: str) -> list[str]:
    """The messages of plain progress lines, without their ``[HH:MM:SS]`` stamp."""
    out = []
    for line in err.splitlines():
        assert line[0] == "[" and line[9:11] == "] ", line
        out.append(line[11:])
    return out


def test_progress_writes_plain_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch) -> None:
    assert list(H.progress(range(3), "train")) == [0, 1, 2]  # capsys: stderr is not a tty
    assert _lines(capsys.readouterr().err) == ["train: 0/3 ...", "train: 3/3 done (0 s)"]
    monkeypatch.setattr(H, "LOG_EVERY_S", 0.0)
    assert list(H.progress(range(2), "eval")) == [0, 1]
    assert _lines(capsys.readouterr().err) == ["eval: 0/2 ...", "eval: 1/2 done (0 s)", "eval: 2/2 done (0 s)"]
    monkeypatch.setattr(H, "LOG_EVERY_S", 3600.0)
    assert list(H.progress(iter("ab"), "gen")) == ["a", "b"]  # no length: counts without a total
    assert _lines(capsys.readouterr().err) == ["gen: 0 ...", "gen: 2 done (0 s)"]
    assert list(H.progress(iter(()), "none")) == []
    assert _lines(capsys.readouterr().err) == ["none: 0 ...", "none: 0 done (0 s)"]
    assert list(H.progress(range(3), "off", enable=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_stage_logs_start_and_end_and_records_seconds(capsys) -> None:
    timings: dict[str, float] = {}
    with H.stage("train timeflow", timings, "train_s"):
        pass
    assert list(timings) == ["train_s"] and timings["train_s"] >= 0
    lines = _lines(capsys.readouterr().err)
    assert lines[0] == "train timeflow ..." and lines[1].startswith("train timeflow: done in ")
    with H.stage("no timings"):
        pass
    assert len(_lines(capsys.readouterr().err)) == 2
    with pytest.raises(ValueError, match="timing key 'train' must end in '_s'"):
        with H.stage("bad", timings, "train"):
            pass


def test_default_run_dir_names_modality_and_profile() -> None:
    d = H.default_run_dir("toy", "quick")
    assert d.parent.name == "runs" and d.name.endswith("-toy-quick")


def test_format_metric() -> None:
    assert R.format_metric(0.012345) == "0.01235"
    assert R.format_metric({"mean": 1.5, "ci95": 0.25, "n": 3}) == "1.5 ± 0.25"
    assert R.format_metric(None) == "n/a"


def test_report_and_table_hold_every_number(tmp_path) -> None:
    res = _result(plots=["curve.png"], notes=["a note"])
    R.plot_curves(tmp_path / "curve.png", {"euler": ([1, 2, 4], [1.0, 0.5, 0.0])}, "t", "NFE", "err")
    md = R.write_report(res, tmp_path).read_text()
    for text in ("toy (smoke)", res.commit, "| sw | 0.12 |", "0.05 ± 0.01", "| ddim | sw | 0.2 |",
                 "solver_overhead_ratio", "a note", "![curve](curve.png)"):
        assert text in md
    table = R.results_table([res, _result()])
    assert table.count("solver_overhead_ratio") == 2 and "baseline ddim" in table


def test_overview_of_bench_all_links_each_report_shows_goals_and_what_did_not_run(tmp_path) -> None:
    a = _result(plots=["one.png", "two.png", "three.png"], metrics={"sw": 0.1, "goal.sw_ratio": 0.5})
    b = H.BenchResult.create("fmri", "smoke", 7, metrics={"goal.enc": {"mean": 0.9, "ci95": 0.01, "n": 3}},
                             baselines={}, timings={"total_s": 120.0})
    problems = {"mri": "failed: ValueError: bad volume"}
    md = R.write_overview([a, b], tmp_path / "new", "smoke", problems).read_text()
    for text in ("every modality (smoke)", a.commit, "wall time of the benchmarks: 2.0 min",
                 "| toy | 1.5 s | 2 | 1 | 3 | [toy/report.md](toy/report.md) |",
                 "| fmri | 2.0 min | 1 | 0 | 0 | [fmri/report.md](fmri/report.md) |",
                 "| toy | sw_ratio | 0.5 |", "| fmri | enc | 0.9 ± 0.01 |", "- mri: failed: ValueError: bad volume",
                 "![toy one](toy/one.png)", "![toy two](toy/two.png)"):
        assert text in md, text
    assert "three.png" not in md and "| toy | sw |" not in md  # the first OVERVIEW_PLOTS plots; goal.* metrics only
    text = R.overview_tables([a, b], problems)
    assert "toy/report.md" in text and "enc" in text and "sw_ratio" in text and text.endswith("bad volume")


def test_plots_write_png_files(tmp_path) -> None:
    x = torch.randn(100, 3)
    paths = [
        R.plot_curves(tmp_path / "c.png", {"a": ([1, 2], [0.1, 0.2])}, "t", "x", "y", log=False),
        R.plot_scatter(tmp_path / "s.png", x, x + 1, "t"),
        R.plot_loss(tmp_path / "l.png", {"run": ([0, 10], [1.0, 0.5])}, "t"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_select_profile_names_the_known_ones_and_needs_cuda_for_gpu() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class P:
        device: str
        threads: int

    profiles = {"quick": P("cpu", 1), "gpu": P("cuda", 0)}
    assert H.select_profile(profiles, "quick") == P("cpu", 1)
    with pytest.raises(ValueError, match=r"unknown profile 'fast'; known: \['gpu', 'quick'\]"):
        H.select_profile(profiles, "fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="profile 'gpu' needs a CUDA device"):
            H.select_profile(profiles, "gpu")


def test_torch_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    with H.torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError):
        with H.torch_threads(before + 1):
            raise KeyError("x")
    assert torch.get_num_threads() == before
    with H.torch_threads(0):
        assert torch.get_num_threads() == before
