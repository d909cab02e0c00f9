"""The ``modaflow`` command line.

    modaflow datasets
    modaflow train    <modality> [--data D] [--out DIR] [--devices N] [--num-nodes N]
                      [--strategy S] [--precision P] [--max-steps N] [<recipe options>]
    modaflow sample   <modality> --ckpt DIR --out FILE [--n N] [--steps K] [--solver NAME] [--seed S]
    modaflow evaluate <modality> --ckpt DIR [--data D] [--n N] [--steps K] [--solver NAME] [--seed S] [--out FILE]
    modaflow finetune <modality> --ckpt DIR --data D --out NEW [trainer and recipe options]
    modaflow bench    <modality|all> [--profile smoke|quick|full|gpu|<modality's own>] [--out DIR] [--seed S]
    modaflow <command> <modality> [--out DIR] [<command options>]   (a modality's own commands)

A modality's ``sample_options`` config adds its fields to ``sample`` and ``evaluate``, and
its ``commands`` add subcommands (``modaflow steer robotics ...``), each with options built
from its own config. Recipe options are built from the modality's config dataclass (nested configs are
flattened: ``--lr`` sets ``fm.lr``), with each field's docstring as its help:
``modaflow train toy --help`` lists them. User errors (bad arguments, files, configs)
print one line naming the bad argument and exit with status 2; ``MODAFLOW_DEBUG=1`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from modaflow.core.config import Config, ConfigError, field_docs
from modaflow.core.devices import check_accelerator
from modaflow.core.io import RunFolderBusy, run_folder_lock
from modaflow.core.training import CheckpointError, TrainerArgs
from .harness import default_run_dir, require_cuda, stage
from modaflow.modalities.registry import Modality, ModalityUnavailable, UnknownNameError, get_modality, list_datasets, modality_names

__all__ = ["main", "build_parser", "config_overrides"]

PROFILES = ("smoke", "quick", "full", "gpu")
BUILTIN_COMMANDS = ("datasets", "train", "finetune", "sample", "evaluate", "bench")
_MODALITY_COMMANDS = ("train", "finetune", "sample", "evaluate")
USER_ERRORS = (ConfigError, CheckpointError, UnknownNameError, ModalityUnavailable, FileNotFoundError, ValueError,
               RunFolderBusy)
_CFG, _TRAINER, _OPT, _CMD = "cfg.", "trainer.", "opt.", "cmd."


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage block), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_or_str(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _bool_word(text: str) -> bool:
    """One item of a list of booleans (``--attention-levels false false true``): argparse's
    ``type=bool`` would read every non-empty word, "false" included, as True."""
    try:
        return _BOOL_WORDS[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


def _arg_spec(tp: Any) -> dict[str, Any]:
    """argparse keywords for a field annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin in (typing.Union, types.UnionType):
        kinds = {a for a in args if a is not type(None)}
        return {"type": _int_or_str if kinds == {int, str} else next(iter(kinds))}
    if origin in (tuple, list):
        item = args[0] if args else str
        return {"nargs": "+", "type": _bool_word if item is bool else item}
    return {"type": tp}


def _defaults(cls: type[Config]) -> dict[str, Any]:
    try:
        return cls().to_dict()
    except (TypeError, ConfigError):  # a config with required fields
        return {}


def add_config_options(parser: argparse.ArgumentParser, cls: type[Config], prefix: str,
                       group=None, defaults: dict[str, Any] | None = None) -> None:
    """Add ``--<field>`` for every field of ``cls`` (nested configs flattened), with
    ``dest`` the dotted path after ``prefix`` (``cfg.fm.lr``) and default ``SUPPRESS``, so
    only the options given appear; the help shows the field's docstring and the default of
    ``cls()``. A name used twice is a programming error (argparse raises)."""
    group = group or parser.add_argument_group(f"{cls.__name__} options")
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    defaults = _defaults(cls) if defaults is None else defaults
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and issubclass(tp, Config):
            add_config_options(parser, tp, f"{prefix}{f.name}.", group, defaults.get(f.name, {}))
            continue
        help_text = f"{docs.get(f.name, '')} (default: {defaults.get(f.name, 'required')})".replace("%", "%%")
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=prefix + f.name, default=argparse.SUPPRESS,
                           metavar=f.name.upper(), help=help_text, **_arg_spec(tp))


def config_overrides(args: argparse.Namespace, prefix: str = _CFG) -> dict[str, Any]:
    """The options given under ``prefix`` as a nested dict (``{"fm": {"lr": 0.1}}``)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(prefix):
            continue
        *parents, name = dest[len(prefix):].split(".")
        target = out
        for key in parents:
            target = target.setdefault(key, {})
        target[name] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` written into it, nested dicts merged key by key."""
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return merged


def _trainer_args(args: argparse.Namespace) -> TrainerArgs:
    """The command's Lightning settings, refused before anything is written when this machine lacks the accelerator."""
    targs = TrainerArgs.from_dict(_merge(TrainerArgs().to_dict(), config_overrides(args, _TRAINER)))
    check_accelerator(targs.accelerator, targs.devices)
    return targs


def build_parser(modality: Modality | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``modality`` given, ``train`` and ``finetune`` carry its recipe
    options."""
    parser = _Parser(prog="modaflow", description="Flow-matching models for non-image data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    names = modality_names()
    sub.add_parser("datasets", help="list every registered dataset with its data card")
    train = sub.add_parser("train", help="train a model", description="Train; recipe options: modaflow train <modality> --help")
    finetune = sub.add_parser("finetune", help="continue training a checkpoint on new data")
    for p, required in ((train, False), (finetune, True)):
        p.add_argument("modality", choices=names)
        p.add_argument("--out", type=Path, required=required, help="run folder to write (default: runs/<time>-<modality>-train)")
        if required:
            p.add_argument("--ckpt", type=Path, required=True, help="run folder of the checkpoint to continue from")
        add_config_options(p, TrainerArgs, _TRAINER)
        if modality is not None:
            add_config_options(p, modality.config_cls, _CFG)
    sample = sub.add_parser("sample", help="write samples of a trained model")
    evaluate = sub.add_parser("evaluate", help="metrics of samples against held-out data")
    for p in (sample, evaluate):
        p.add_argument("modality", choices=names)
        p.add_argument("--ckpt", type=Path, required=True, help="run folder written by train or finetune")
        sample_n = modality.sample_n if modality is not None else Modality.sample_n
        p.add_argument("--n", type=int, default=sample_n[0] if p is sample else sample_n[1],
                       help="number of samples, where the modality generates them unconditioned (default: %(default)s)")
        p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the recipe's)")
        p.add_argument("--solver", default=None, choices=modality.solvers if modality else None,
                       help="sampler (default: the recipe's)")
        p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    if modality is not None and modality.sample_options is not None:
        for p in (sample, evaluate):
            add_config_options(p, modality.sample_options, _OPT)
    sample.add_argument("--out", type=Path, required=True, help="output file (toy: .npy or .csv)")
    evaluate.add_argument("--data", default=None, help="reference data: a dataset name or file (default: the run's own "
                          "data; which split each modality compares with is in its evaluate's documentation)")
    evaluate.add_argument("--out", type=Path, default=None, help="also write the metrics to this JSON file")
    bench = sub.add_parser("bench", help="run a benchmark profile")
    bench.add_argument("modality", choices=names + ["all"])
    bench.add_argument("--profile", default="quick", metavar="PROFILE",
                       help=f"{', '.join(PROFILES)}: smoke (seconds), quick (minutes), full, gpu; a modality may add its own "
                            "(robotics: study, the COAST study on two tasks x two policy types at CPU sizes)")
    bench.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<time>-<modality>-<profile>)")
    bench.add_argument("--seed", type=int, default=0, help="seed of data, training and sampling")
    for name, command in (modality.commands if modality is not None else {}).items():
        if name in BUILTIN_COMMANDS:
            raise ValueError(f"modality {modality.name!r}: command {name!r} shadows a built-in command")
        p = sub.add_parser(name, help=f"{command.summary} ({modality.name} only)", description=command.summary)
        p.add_argument("modality", choices=[modality.name])
        p.add_argument("--out", type=Path, default=None, help="output folder")
        add_config_options(p, command.config_cls, _CMD)
    return parser


def _options(cls: type[Config], args: argparse.Namespace, prefix: str) -> Config:
    """An instance of ``cls`` from its defaults and the options given under ``prefix``."""
    return cls.from_dict(_merge(_defaults(cls), config_overrides(args, prefix)))


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"argument --{name}: expected an integer >= 1, got {value}")


def _datasets() -> int:
    from modaflow.data_cards import load_card

    rows = [(m, info.name, info.card, load_card(info.card).summary()) for m, info in list_datasets()]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, width)) + "  " + r[3])
    return 0


def _bench(args: argparse.Namespace) -> int:
    names = modality_names() if args.modality == "all" else [args.modality]
    if args.modality == "all" and args.profile not in PROFILES:
        raise ValueError(f"argument --profile: invalid choice: {args.profile!r} (bench all runs {', '.join(PROFILES)})")
    modality = None
    if args.modality != "all":
        modality = get_modality(args.modality)
        if args.profile not in modality.profiles:
            raise ValueError(f"argument --profile: invalid choice: {args.profile!r} ({modality.name} has "
                             f"{', '.join(modality.profiles)})")
    # every modality's gpu profile is a CUDA one: refused here, before the lock, a stage line or (bench all) six
    # modalities failing one by one
    if args.profile == "gpu":
        require_cuda(args.profile)
    out = args.out or default_run_dir(args.modality, args.profile)
    with run_folder_lock(out):
        return _bench_into(args, modality, names, out)


def _bench_into(args: argparse.Namespace, modality: Modality | None, names: list[str], out: Path) -> int:
    """``bench`` into ``out`` (its lock held): one modality's table, or every modality's and the overview."""
    from .report import overview_tables, results_table, write_overview

    if modality is not None:
        with stage(f"bench {modality.name} --profile {args.profile}"):
            result = modality.bench(args.profile, out, args.seed)
        print(results_table([result]))
        print(f"results, report and plots in {out}", file=sys.stderr)
        return 0
    results, problems, failed = [], {}, False
    for name in names:
        try:
            with stage(f"bench {name} --profile {args.profile}"):
                results.append(get_modality(name).bench(args.profile, out / name, args.seed))
        except ModalityUnavailable as e:
            problems[name] = f"skipped: {e}"
            print(f"skipping {name}: {e}", file=sys.stderr)
        except Exception as e:  # one broken modality must not hide the others' results
            failed = True
            problems[name] = f"failed: {type(e).__name__}: {e}"
            print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr)
    print(results_table(results))
    print()
    print(overview_tables(results, problems))
    overview = write_overview(results, out, args.profile, problems)
    print(f"results, reports and plots in {out}/<modality>; the overview of them all: {overview}", file=sys.stderr)
    return 1 if failed else 0


def _run(args: argparse.Namespace, modality: Modality | None) -> int:
    cmd = args.command
    if cmd == "datasets":
        return _datasets()
    if cmd == "bench":
        return _bench(args)
    assert modality is not None
    if cmd == "train":
        cfg = modality.config_cls.from_dict(_merge(modality.config_cls().to_dict(), config_overrides(args)))
        out = args.out or default_run_dir(modality.name, "train")
        with run_folder_lock(out):
            summary = modality.train(cfg, _trainer_args(args), out)
        print(f"trained {summary['steps']} steps, final loss {summary['final_loss']:.4g}; run folder: {out}")
    elif cmd == "finetune":
        overrides = config_overrides(args)
        data = overrides.pop("data", None)
        if data is None:
            raise ValueError("argument --data: required for finetune (a dataset name or a file)")
        with run_folder_lock(args.out):
            summary = modality.finetune(args.ckpt, data, args.out, overrides, _trainer_args(args))
        print(f"finetuned {summary['steps']} steps, final loss {summary['final_loss']:.4g}; run folder: {args.out}")
    elif cmd == "sample":
        _check_positive(args, "n", "steps")
        extra = {} if modality.sample_options is None else {"options": _options(modality.sample_options, args, _OPT)}
        path = modality.sample(args.ckpt, args.n, args.steps, args.solver, args.out, args.seed, **extra)
        print(f"wrote samples to {path}")  # how many is the modality's: conditioned ones follow their inputs
    elif cmd == "evaluate":
        _check_positive(args, "n", "steps")
        extra = {} if modality.sample_options is None else {"options": _options(modality.sample_options, args, _OPT)}
        metrics = modality.evaluate(args.ckpt, args.data, args.n, args.steps, args.solver, args.seed, **extra)
        text = json.dumps(metrics, indent=2)
        if args.out:
            from modaflow.core.io import atomic_write_text

            atomic_write_text(args.out, text + "\n")
        print(text)
    else:  # a modality's own command
        command = modality.commands[cmd]
        with run_folder_lock(args.out) if args.out is not None else contextlib.nullcontext():
            result = command.run(_options(command.config_cls, args, _CMD), args.out)
        print(json.dumps(result, indent=2, default=str))
    return 0


def _name_option(message: str, argv: list[str]) -> str:
    """Prefix a config error (``ToyConfig.dim: expected ...``) with the option the user gave
    for that field (``argument --dim: ...``)."""
    match = re.match(r"^[\w.]*?(\w+): ", message)
    option = "--" + match.group(1).replace("_", "-") if match else None
    given = {a.split("=", 1)[0] for a in argv}
    return f"argument {option}: {message}" if option in given else message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    modality = None
    modality_command = argv[:1] and (argv[0] in _MODALITY_COMMANDS or argv[0] not in BUILTIN_COMMANDS)
    if len(argv) > 1 and modality_command and argv[1] in modality_names():
        try:
            modality = get_modality(argv[1])
        except ModalityUnavailable as e:
            print(f"modaflow {argv[0]}: error: {e}", file=sys.stderr)
            return 2
    parser = build_parser(modality)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return _run(args, modality)
    except SystemExit as e:
        return int(e.code or 0)
    except USER_ERRORS as e:
        if os.environ.get("MODAFLOW_DEBUG"):
            raise
        print(f"modaflow {args.command}: error: {_name_option(str(e), argv)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (checkpoints are written atomically)
        if os.environ.get("MODAFLOW_DEBUG"):
            raise
        print(f"modaflow {args.command}: interrupted; checkpoints already saved are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
