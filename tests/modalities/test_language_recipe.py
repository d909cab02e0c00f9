"""Language recipe end to end on small real files: train (FLM, MDLM, evaluator), distil FMLM,
sample through the CLI (decoded text printed), evaluate, finetune keeping the tokenizer, and
the bad-input errors; the smoke benchmark's result."""

import json
import math
import logging
import warnings

import pytest
import torch

from modaflow.benchmarks.cli import main
from modaflow.core.config import ConfigError
from modaflow.core.training import TrainerArgs
from modaflow.modalities.language.data import CorpusError
from modaflow.modalities.language.generation import evaluate, generate, sample
from modaflow.modalities.language.recipe import LanguageConfig, SampleOptions, finetune, restore, train
from modaflow.modalities.language.tokenizer import TokenizerError, load_tokenizer

LINES = ["Now is the winter of our discontent", "Made glorious summer by this sun of York;",
         "And all the clouds that lour'd upon our house", "In the deep bosom of the ocean buried."]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("lang")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(10):
        (corpus / f"{i}.txt").write_text("\n\n".join(LINES[(i + k) % 4] for k in range(6)) + "\n")
    base = LanguageConfig(data=str(corpus), block_len=16, dim=16, depth=1, heads=2, steps=4)
    base = base.replace(fm=base.fm.replace(max_steps=6, batch_size=8, log_every=2, ckpt_every=6))
    targs = TrainerArgs(accelerator="cpu")
    out = {"root": root, "corpus": corpus, "base": base}
    for method in ("flm", "mdlm", "ar"):
        out[method] = train(base.replace(method=method), targs, root / method, progress=False)
    distil = base.replace(method="fmlm", teacher=str(root / "flm"), fm=base.fm.replace(max_steps=3, log_every=1, ckpt_every=3))
    out["fmlm"] = train(distil, targs, root / "fmlm", progress=False)
    return out


def test_runs_hold_the_tokenizer_and_reload(runs) -> None:
    root = runs["root"]
    for method in ("flm", "mdlm", "ar", "fmlm"):
        assert runs[method]["steps"] == (3 if method == "fmlm" else 6)
        cfg, tok, net = restore(root / method)
        assert tok.get_vocab_size() == cfg.vocab == len(set("".join(LINES))) + 3  # paragraphs: no newline
    assert load_tokenizer(root / "fmlm").to_str() == load_tokenizer(root / "flm").to_str()  # FMLM keeps the teacher's


def test_cli_sample_prints_decoded_text(runs, capsys, tmp_path) -> None:
    out = tmp_path / "s.jsonl"
    assert main(["sample", "language", "--ckpt", str(runs["root"] / "fmlm"), "--steps", "1", "--n", "3",
                 "--out", str(out), "--temperature", "0.7", "--top-p", "0.9"]) == 0
    printed = capsys.readouterr().out
    texts = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert len(texts) == 3 and "=== sample 2 ===" in printed and texts[0] in printed
    assert main(["sample", "language", "--ckpt", str(runs["root"] / "flm"), "--n", "2", "--out", str(tmp_path / "s.txt")]) == 0


def test_device_option_of_sample_and_evaluate(runs, tmp_path) -> None:
    opts = SampleOptions(evaluator=str(runs["root"] / "ar"), device="cpu")
    assert evaluate(runs["root"] / "mdlm", None, 4, 2, None, 0, opts) == \
        evaluate(runs["root"] / "mdlm", None, 4, 2, None, 0, SampleOptions(evaluator=str(runs["root"] / "ar")))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda was asked for, but torch sees no GPU"):
            sample(runs["root"] / "flm", 2, 2, None, tmp_path / "s.txt", 0, SampleOptions(device="cuda"))


@pytest.mark.gpu
def test_sampling_on_cuda_matches_the_cpu(runs, tmp_path) -> None:
    from modaflow.modalities.language.flm import final_logits_flm

    cfg, _, net = restore(runs["root"] / "flm")
    cpu = final_logits_flm(net, 3, cfg.block_len, 2, 0)
    gpu = final_logits_flm(net.to("cuda"), 3, cfg.block_len, 2, 0).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)  # the same noise (drawn on the CPU): rounding only
    out = sample(runs["root"] / "fmlm", 3, 1, None, tmp_path / "s.txt", 0, SampleOptions(device="cuda"))
    assert out.read_text().count("=== sample ") == 3
    m = evaluate(runs["root"] / "mdlm", None, 4, 2, None, 0, SampleOptions(evaluator=str(runs["root"] / "ar"), device="cuda"))
    assert 1 < m["gen_ppl"] < math.inf


def test_evaluate_reports_metrics_with_the_evaluator(runs) -> None:
    m = evaluate(runs["root"] / "mdlm", None, 4, 2, None, 0, SampleOptions(evaluator=str(runs["root"] / "ar")))
    for k in ("gen_ppl", "evaluator_test_ppl", "entropy", "data_entropy", "js_2gram", "js_4gram", "self_bleu"):
        assert k in m and m[k] == m[k]
    with pytest.raises(ConfigError, match="must be an 'ar' run"):
        evaluate(runs["root"] / "flm", None, 2, 2, None, 0, SampleOptions(evaluator=str(runs["root"] / "mdlm")))



def test_evaluate_refuses_data_of_another_vocabulary(runs, tmp_path) -> None:
    with pytest.raises(TokenizerError, match="data 'markov': the checkpoint's vocabulary is a text tokenizer"):
        evaluate(runs["root"] / "flm", "markov", 2, 2, None, 0)
    alien = tmp_path / "alien.txt"  # characters the char vocabulary lacks would all be scored as <unk>
    alien.write_text("\n\n".join(["Zebra quartz jumps! " * 8] * 12))
    with pytest.raises(TokenizerError, match=r"alien.txt: characters \['!', 'J', 'Z'|alien.txt: characters \["):
        evaluate(runs["root"] / "flm", str(alien), 2, 2, None, 0)
    m = evaluate(runs["root"] / "flm", str(runs["corpus"]), 2, 2, None, 0)  # the same vocabulary: scored
    assert 0 <= m["js_2gram"] <= 1


def test_finetune_keeps_the_tokenizer_and_refuses_mismatches(runs, tmp_path) -> None:
    root, targs = runs["root"], TrainerArgs(accelerator="cpu")
    new = tmp_path / "new.txt"
    new.write_text("\n\n".join(reversed(LINES * 3)))
    res = finetune(root / "flm", str(new), tmp_path / "ft", {"fm": {"max_steps": 2}}, targs, progress=False)
    assert res["steps"] == 2
    assert load_tokenizer(tmp_path / "ft").to_str() == load_tokenizer(root / "flm").to_str()
    alien = tmp_path / "alien.txt"
    alien.write_text("Zebra quartz! " * 40)
    with pytest.raises(TokenizerError, match=r"alien.txt: characters \['!', 'Z', 'q', 'z'\] are not in the checkpoint's character vocabulary"):
        finetune(root / "flm", str(alien), tmp_path / "ft2", {}, targs, progress=False)
    with pytest.raises(ConfigError, match="finetune cannot change vocab_size"):
        finetune(root / "flm", str(new), tmp_path / "ft3", {"vocab_size": 1024}, targs, progress=False)
    with pytest.raises(ConfigError, match="cannot change block_len: the checkpoint .* has 16, got 64, longer than the model's"):
        finetune(root / "flm", str(new), tmp_path / "ft4", {"block_len": 64}, targs, progress=False)
    with pytest.raises(ConfigError, match=r"cannot change block_len: the checkpoint .* has 16, got 8 \(the tokenizer"):
        finetune(root / "flm", str(new), tmp_path / "ft5", {"block_len": 8}, targs, progress=False)


def test_bad_input_errors(runs, tmp_path) -> None:
    cfg, tok, net = restore(runs["root"] / "flm")
    with pytest.raises(ConfigError, match="length: 17 tokens is longer than the model's block_len = 16"):
        generate(cfg, net, 1, 2, 0, SampleOptions(length=17))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("recipe.json", "tokenizer.json"):
        (broken / f).write_text((runs["root"] / "mdlm" / f).read_text())
    (broken / "checkpoints").mkdir()
    (broken / "checkpoints" / "last.safetensors").write_bytes((runs["root"] / "mdlm" / "checkpoints" / "last.safetensors").read_bytes())
    (broken / "checkpoints" / "last.json").write_text((runs["root"] / "mdlm" / "checkpoints" / "last.json").read_text())
    (broken / "tokenizer.json").write_text((runs["root"] / "flm" / "tokenizer.json").read_text().replace('"<unk>":2', '"<unk>":2,"zz":999'))
    with pytest.raises(TokenizerError, match="checkpoint and tokenizer do not match"):
        restore(broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("\n")
    with pytest.raises(CorpusError, match="the corpus is empty"):
        train(runs["base"].replace(data=str(empty)), TrainerArgs(accelerator="cpu"), tmp_path / "e", progress=False)
    with pytest.raises(TokenizerError, match="larger than the configured limit max_vocab = 20"):
        train(runs["base"].replace(max_vocab=20), TrainerArgs(accelerator="cpu"), tmp_path / "v", progress=False)
    assert main(["train", "language", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    small = tmp_path / "small.txt"  # enough for training blocks of 128; its last 10% (the test split) is not
    small.write_text("\n\n".join(f"line {i} of a short corpus" for i in range(30)))
    with pytest.raises(CorpusError, match=r"small.txt: its test split: corpus has \d+ tokens, fewer than one block of "
                                          r"block_len = 128; give more text or a shorter --block-len"):
        train(runs["base"].replace(data=str(small), block_len=128), TrainerArgs(accelerator="cpu"), tmp_path / "s",
              progress=False)


def test_smoke_benchmark_has_metrics_baselines_plots_and_text(tmp_path) -> None:
    from modaflow.benchmarks.language import run

    r = run("smoke", tmp_path, 0)
    assert r.metrics and r.baselines
    assert {"text.flm", "text.mdlm", "text.reference", "markov.flm"} <= set(r.baselines)
    assert "text.fmlm.gen_ppl@1" in r.metrics and "goal.fmlm1_over_flm8_gen_ppl_ratio" in r.metrics
    assert r.timings["train.lowrank_chunked_eager_speedup_ratio"] > 0
    assert all((tmp_path / p).is_file() for p in r.plots)
    report = (tmp_path / "report.md").read_text()
    assert "## Sample text" in report and "| FMLM | 1 |" in report
    # the validation-calibrated last-step temperature: rows for every FLM / FMLM cell and MDLM at match_steps
    assert {"text.flm-cal", "text.fmlm-cal", "text.mdlm-cal"} <= set(r.baselines)
    assert r.baselines["text.fmlm-cal"]["temperature@1"] in (0.0, 1.0) and "goal.calibrated.fmlm1_entropy_rel_gap" in r.metrics
    assert r.baselines["text.reference"]["val_entropy"] > 0 and "| FMLM-CAL | 1 |" in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_gpu_profile_needs_cuda(tmp_path) -> None:
    from modaflow.benchmarks.language import run

    with pytest.raises(ValueError, match="profile 'gpu' needs a CUDA device"):
        run("gpu", tmp_path, 0)


def test_matched_entropy_interpolation() -> None:
    from modaflow.benchmarks.language_report import interpolate_at_entropy

    pts = [(3.4, 200.0), (3.0, 100.0), (2.6, 80.0)]  # unsorted on purpose
    assert interpolate_at_entropy(pts, 3.2) == pytest.approx(math.sqrt(100.0 * 200.0))  # log-linear in entropy
    assert interpolate_at_entropy(pts, 3.0) == pytest.approx(100.0)
    assert math.isnan(interpolate_at_entropy(pts, 3.5)) and math.isnan(interpolate_at_entropy(pts, 2.5))  # no extrapolation
    assert math.isnan(interpolate_at_entropy(pts[:1], 3.4 + 1e-9))


def test_training_is_reproducible_whatever_the_global_rng(tmp_path) -> None:
    """Initial weights come from fm.seed, not the global RNG (the bench's seed-0 rows differed between runs)."""
    base = LanguageConfig(data="markov", markov_vocab=16, markov_train=64, block_len=8, dim=16, depth=1, heads=2)
    cfg = base.replace(fm=base.fm.replace(max_steps=3, batch_size=8, log_every=1, ckpt_every=3, warmup_steps=0))
    hist = []
    for i in range(2):
        torch.manual_seed(100 + i)  # a different global RNG state before each run
        hist.append(train(cfg, TrainerArgs(accelerator="cpu"), tmp_path / str(i), progress=False)["history"])
    assert hist[0] == hist[1]
    w = [restore(tmp_path / str(i))[2].state_dict() for i in range(2)]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    distil = cfg.replace(method="fmlm", teacher=str(tmp_path / "0"))  # the student's new branch too
    for i in range(2):
        torch.manual_seed(200 + i)
        train(distil, TrainerArgs(accelerator="cpu"), tmp_path / f"f{i}", progress=False)
    w = [restore(tmp_path / f"f{i}")[2].state_dict() for i in range(2)]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])


def test_last_step_temperature_sweep_rule(runs, tmp_path) -> None:
    """language_fmlm_diag --sweep: every sampler's curve over the temperatures and the rule's pick
    (the temperature whose entropy is closest to the validation blocks')."""
    from modaflow.benchmarks.language_fmlm_diag import SWEEP_SAMPLERS, closest_entropy_temperature, sweep

    curve = [(0.0, 3.0, 10.0), (0.5, 3.4, 20.0), (1.0, 3.9, 40.0)]
    assert closest_entropy_temperature(curve, 3.5) == (0.5, 3.4, 20.0)
    assert closest_entropy_temperature(curve, 9.0) == (1.0, 3.9, 40.0)
    assert closest_entropy_temperature([(1.0, 3.0, 1.0), (0.0, 3.0, 2.0)], 3.0)[0] == 0.0  # tie: the lower temperature
    (tmp_path / "runs").mkdir()
    for name in ("flm", "fmlm", "ar"):
        (tmp_path / "runs" / f"text-{name}").symlink_to(runs["root"] / name)
    out = sweep(str(tmp_path), n=4, draws=1, temperatures=(0.0, 1.0))
    assert out["val_entropy"] > 0
    for name, steps in SWEEP_SAMPLERS:
        row = out[f"{name}@{steps}"]
        assert [c[0] for c in row["curve"]] == [0.0, 1.0]
        assert row["chosen"] == closest_entropy_temperature(row["curve"], out["val_entropy"])
