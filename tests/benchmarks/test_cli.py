"""The modaflow CLI end to end on the toy modality, in a temporary folder: train, sample,
evaluate, finetune, bench (smoke), datasets; user errors exit with status 2 and one line
naming the bad argument."""

import json
import re
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch

from modaflow.benchmarks.cli import main
from modaflow.benchmarks.harness import REQUIRED_KEYS

TINY = ["--n-train", "256", "--hidden", "16", "--depth", "1", "--time-embed-dim", "8",
        "--log-every", "5", "--accelerator", "cpu", "--batch-size", "64"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest and immune to busy cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "toy", "--out", str(out), "--max-steps", "30", "--ckpt-every", "10", *TINY]) == 0
    return out


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_train_writes_checkpoint_configs_and_losses(run_dir) -> None:
    assert (run_dir / "checkpoints" / "last.safetensors").is_file()
    recipe = json.loads((run_dir / "recipe.json").read_text())
    assert recipe["modality"] == "toy"
    assert recipe["config"]["hidden"] == 16 and recipe["config"]["fm"]["max_steps"] == 30
    assert json.loads((run_dir / "config.json").read_text())["flow_matching"]["batch_size"] == 64
    steps = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_sample_writes_deterministic_samples(run_dir, tmp_path, suffix) -> None:
    paths = [tmp_path / f"{name}{suffix}" for name in "abc"]
    for path, seed in zip(paths, (1, 1, 2)):
        assert main(["sample", "toy", "--ckpt", str(run_dir), "--n", "50", "--steps", "4", "--solver", "heun",
                     "--seed", str(seed), "--out", str(path)]) == 0
    load = np.load if suffix == ".npy" else (lambda p: np.loadtxt(p, delimiter=","))
    a, b, c = (load(p) for p in paths)
    assert a.shape == (50, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_every_solver_samples(run_dir, tmp_path) -> None:
    for solver in ("euler", "midpoint", "heun", "rk4", "em", "ddim"):
        assert main(["sample", "toy", "--ckpt", str(run_dir), "--n", "8", "--steps", "2", "--solver", solver,
                     "--out", str(tmp_path / f"{solver}.npy")]) == 0
    # DDIM on the linear path with a velocity model is exactly Euler (same x0)
    np.testing.assert_allclose(np.load(tmp_path / "ddim.npy"), np.load(tmp_path / "euler.npy"), atol=1e-5)


def test_evaluate_prints_and_writes_metrics(run_dir, tmp_path, capsys) -> None:
    out = tmp_path / "m.json"
    assert main(["evaluate", "toy", "--ckpt", str(run_dir), "--n", "200", "--steps", "4", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["n_samples"] == 200 and printed["n_reference"] == 2048
    assert {"sliced_wasserstein", "energy_distance", "mmd_rbf"} <= set(printed)


def test_finetune_continues_on_new_data_and_rejects_a_wrong_dimension(run_dir, tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "new.npy", rng.normal(size=(128, 2)).astype(np.float32))
    new = tmp_path / "new_run"
    assert main(["finetune", "toy", "--ckpt", str(run_dir), "--data", str(tmp_path / "new.npy"), "--out", str(new),
                 "--max-steps", "10", "--lr", "1e-4", "--accelerator", "cpu"]) == 0
    recipe = json.loads((new / "recipe.json").read_text())["config"]
    assert recipe["data"] == str(tmp_path / "new.npy") and recipe["fm"]["lr"] == 1e-4 and recipe["hidden"] == 16
    assert json.loads((new / "checkpoints" / "last.json").read_text())["step"] == 10
    np.savetxt(tmp_path / "wide.csv", rng.normal(size=(20, 3)), delimiter=",")
    err = _error(capsys, ["finetune", "toy", "--ckpt", str(run_dir), "--data", str(tmp_path / "wide.csv"),
                          "--out", str(tmp_path / "bad"), "--accelerator", "cpu"])
    assert "wide.csv: data has D = 3 columns but the model expects dim = 2" in err
    err = _error(capsys, ["finetune", "toy", "--ckpt", str(run_dir), "--data", "moons", "--out", str(tmp_path / "b2"),
                          "--hidden", "32"])
    assert "finetune cannot change hidden" in err


def _check_bench_dir(out) -> dict:
    data = json.loads((out / "results.json").read_text())
    assert set(REQUIRED_KEYS) <= set(data)
    assert data["modality"] == "toy" and data["profile"] == "smoke" and data["seed"] == 3
    assert data["plots"] and all((out / p).read_bytes()[:4] == b"\x89PNG" for p in data["plots"])
    report = (out / "report.md").read_text()
    assert "solver_overhead_ratio" in report and all(p in report for p in data["plots"])
    return data


def test_bench_toy_smoke_writes_results_report_and_plots(tmp_path, capsys) -> None:
    assert main(["bench", "toy", "--profile", "smoke", "--out", str(tmp_path), "--seed", "3"]) == 0
    data = _check_bench_dir(tmp_path)
    m = data["metrics"]
    assert 0.7 < m["oracle.euler.order"] < 1.2  # first order, from NFE 4 -> 8
    assert m["oracle.ddim.path_error@nfe8"] == pytest.approx(m["oracle.euler.path_error@nfe8"], rel=1e-9)
    assert m["oracle.rk4.path_error@nfe8"] < m["oracle.midpoint.path_error@nfe8"] * 10 < m["oracle.euler.path_error@nfe8"]
    assert data["timings"]["solver_overhead_ratio"] > 0
    assert {"heun", "real_data_floor", "exact_flow_map"} <= set(data["baselines"])
    assert "moons2d.sw@nfe4" in m and "solver_overhead_ratio" in capsys.readouterr().out
    _check_onestep(data, m)


def _check_onestep(data: dict, m: dict) -> None:
    """Issue 3: the one-step table, its goal ratios, conservativity, scaling and steering rows."""
    pre, rate = "onestep.moons2d.", data["timings"]
    maps = [f"map_{loss}" for loss in ("lagrangian", "eulerian", "progressive", "teacher", "lagrangian_teacher")]
    for nfe in (1, 2, 4, 8, 32, 128):
        assert {"mean", "ci95", "n"} <= set(m[f"{pre}teacher.sw@nfe{nfe}"]) and f"{pre}teacher.energy@nfe{nfe}" in m
    for name in maps + ["reflow", "ot_cfm"]:
        assert all(f"{pre}{name}.sw@nfe{k}" in m for k in (1, 2, 4)) and rate[f"{pre}{name}.samples_per_s"] > 0
    assert f"{pre}wflow.sw@nfe1" in m and rate[f"{pre}teacher.samples_per_s@nfe128"] > 0
    best = min(m[f"{pre}{n}.sw@nfe1"]["mean"] for n in maps)
    assert m[f"{pre}best_flow_map.sw@nfe1"] == best
    assert m[f"{pre}best_flow_map.sw_ratio_vs_teacher128"] == pytest.approx(best / m[f"{pre}teacher.sw@nfe128"]["mean"])
    assert m[f"{pre}best_flow_map.speedup_vs_teacher128"] > 0
    assert all(f"{pre}{n}.loglik" in m for n in ("teacher", "reflow", "ot_cfm"))
    assert 0 <= m["conservativity.moons2d.teacher.asymmetry@t0.5"] <= 2
    assert all(f"scaling.moons2d.{s}.reward@nfe16" in m for s in ("best_of_n", "greedy", "smc", "rollover"))
    assert m["steering.gaussian4d.flowchef.residual"] < 1e-9 < m["steering.gaussian4d.none.residual"]
    assert {"onestep_moons2d_samples.png", "onestep_moons2d_sw_vs_nfe.png", "conservativity_moons2d.png",
            "scaling_moons2d.png"} <= set(data["plots"])


def test_bench_all_writes_one_folder_per_modality(tmp_path, capsys) -> None:
    """Every registered modality's smoke benchmark runs end to end inside the suite."""
    from modaflow.modalities.registry import modality_names

    assert main(["bench", "all", "--profile", "smoke", "--out", str(tmp_path), "--seed", "3"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # a long benchmark's log shows each measured row as it lands, not only the report at the end
    assert re.search(r"\] sines TimeFlow \(10 NFE, \w+, shift \S+\): discriminative \d\.\d{4} ± ", captured.err)
    for name in modality_names():
        data = json.loads((tmp_path / name / "results.json").read_text())
        assert set(REQUIRED_KEYS) <= set(data), name
        assert data["modality"] == name and data["profile"] == "smoke" and data["seed"] == 3
        assert data["metrics"] and data["baselines"], f"{name}: a benchmark compares with baselines in the same run"
        assert (tmp_path / name / "report.md").is_file() and name in out
    # one overview links every modality's report and shows its first plots, which exist
    overview = (tmp_path / "report.md").read_text()
    assert all(f"[{name}/report.md]({name}/report.md)" in overview for name in modality_names())
    plots = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", overview)
    assert plots and all((tmp_path / p).is_file() for p in plots)
    assert "wall time" in out and "Did not run" not in overview


def test_datasets_lists_every_dataset_with_its_card(capsys) -> None:
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("gaussian", "gmm", "moons", "checkerboard"):
        assert f"toy-{name}" in out


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["sample", "toy", "--ckpt", "x", "--out", "y.npy", "--n", "abc"], "argument --n: invalid int value"),
        (["sample", "toy", "--ckpt", "x", "--out", "y.npy", "--n", "0"], "argument --n: expected an integer >= 1"),
        (["sample", "toy", "--ckpt", "x", "--out", "y.npy", "--solver", "nope"], "argument --solver: invalid choice"),
        (["sample", "toy", "--out", "y.npy"], "--ckpt"),
        (["bench", "toy", "--profile", "fast"], "argument --profile: invalid choice"),
        (["bench", "mri9"], "argument modality: invalid choice: 'mri9'"),
        (["train", "toy", "--dim", "100"], "argument --dim: ToyConfig.dim: expected an integer in [2, 64]"),
        (["train", "toy", "--lr", "-1"], "argument --lr: FlowMatchingConfig.lr: expected a number > 0"),
        (["train", "toy", "--data", "spiral"], "spiral: data file not found"),
        (["frobnicate"], "argument command: invalid choice"),
    ],
)
def test_user_errors_exit_2_with_one_line_naming_the_argument(argv, expected, capsys, tmp_path) -> None:
    argv = [a if a != "y.npy" else str(tmp_path / a) for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "run")]
    assert expected in _error(capsys, argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("argv", [["train", "toy", "--accelerator", "gpu"], ["bench", "all", "--profile", "gpu"],
                                  ["bench", "toy", "--profile", "gpu"]])
def test_a_gpu_asked_for_without_one_is_refused_before_anything_is_written(argv, capsys, tmp_path) -> None:
    err = _error(capsys, argv + ["--out", str(tmp_path / "run")])
    assert ("TrainerArgs.accelerator: gpu was asked for, but torch sees no GPU" in err if argv[0] == "train"
            else "'gpu' needs a CUDA device; none is available" in err)
    assert not (tmp_path / "run").exists()


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys) -> None:
    import modaflow.benchmarks.cli as cli

    def interrupted(args, modality):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    assert main(["datasets"]) == 130
    assert capsys.readouterr().err.strip() == "modaflow datasets: interrupted; checkpoints already saved are kept"


def test_lists_of_booleans_read_true_and_false_words(capsys) -> None:
    pytest.importorskip("monai")
    from modaflow.benchmarks.cli import build_parser
    from modaflow.modalities.registry import get_modality

    parser = build_parser(get_modality("mri"))
    args = parser.parse_args(["train", "mri", "--attention-levels", "false", "No", "TRUE", "--out", "x"])
    assert vars(args)["cfg.unet.attention_levels"] == [False, False, True]  # type=bool would give [True, True, True]
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "mri", "--attention-levels", "maybe", "--out", "x"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_sample_and_evaluate_default_counts_are_the_modality_s() -> None:
    from modaflow.benchmarks.cli import build_parser
    from modaflow.modalities.registry import get_modality

    def defaults(name: str) -> tuple[int, int]:
        parser = build_parser(get_modality(name))
        return tuple(parser.parse_args([cmd, name, "--ckpt", "r", "--out", "o"]).n for cmd in ("sample", "evaluate"))

    assert defaults("toy") == (1000, 2000)
    assert defaults("mri") == (4, 16)  # 1000 full-size volumes would be 31 GiB of noise before the first step


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys) -> None:
    err = _error(capsys, ["sample", "toy", "--ckpt", str(tmp_path), "--out", str(tmp_path / "s.npy")])
    assert "recipe.json: not found; --ckpt must be a run folder" in err


def test_console_entry_point() -> None:
    (ep,) = entry_points(group="console_scripts", name="modaflow")
    assert ep.value == "modaflow.benchmarks.cli:main"
    run = subprocess.run([sys.executable, "-m", "modaflow.benchmarks.cli", "bench", "toy", "--profile", "nope"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "argument --profile: invalid choice" in run.stderr
    run = subprocess.run([sys.executable, "-m", "modaflow.benchmarks.cli", "datasets"], capture_output=True, text=True)
    assert run.returncode == 0 and "toy-moons" in run.stdout


def test_a_run_folder_another_process_writes_is_refused_before_anything_is_written(tmp_path, capsys) -> None:
    from modaflow.core.io import run_folder_lock

    out = tmp_path / "busy"
    with run_folder_lock(out):
        err = _error(capsys, ["train", "toy", "--out", str(out), "--max-steps", "2", *TINY])
        assert err.startswith(f"modaflow train: error: {out}: pid ") and "is writing this run folder" in err
        err = _error(capsys, ["bench", "toy", "--profile", "smoke", "--out", str(out)])
        assert "is writing this run folder" in err
        assert not out.exists()
    assert main(["train", "toy", "--out", str(out), "--max-steps", "2", "--ckpt-every", "2", *TINY]) == 0
    assert not (tmp_path / ".busy.lock").exists()
