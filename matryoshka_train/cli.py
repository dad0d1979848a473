"""The `mtrain` command: verbs that mirror the workflow. Thin: parse, call, print.

User errors (config, data, interruption) print one line per problem and exit non-zero without a
traceback; ``--debug`` shows the traceback too.

Each verb's module is imported inside the function that runs the verb: the training stack (torch,
sentence-transformers) takes seconds to import, which `mtrain report`, the `mtrain sweep` driver
and `--help` do not need, and `run`/`check`/`eval` probe the hub before they load it. These are
the package's only imports of its own modules inside functions (tests/test_architecture.py allows
them in this module and nowhere else).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence

from . import __version__, hub
from .errors import ConfigError, UserError
from .reporting.redact import install_log_filter, redact, redacted_output
from .training import allocator, distributed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtrain", description="Train Matryoshka sentence encoders from a YAML config."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="path to the YAML config")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set training.learning_rate=3e-5 (repeatable)")
        p.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
        loudness(p)

    def loudness(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--quiet", action="store_true", help="no progress bars")
        group.add_argument("--verbose", action="store_true",
                           help="library warnings and logs too; check: the whole report even when it fails")

    run = sub.add_parser("run", help="train the model a config describes")
    with_config(run)
    run.add_argument("--overwrite", action="store_true", help="replace what is in training.output_dir")
    run.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                     help="continue from the newest complete checkpoint in training.output_dir (or from CHECKPOINT)")
    run.add_argument("--resume-force", action="store_true",
                     help="resume even though result-determining config keys changed (they are listed)")
    run.add_argument("--nproc", type=int, default=None, metavar="N",
                     help="train on N processes of this machine (N GPUs; CPU processes without a GPU) "
                          "through accelerate's launcher; same as accelerate launch --num_processes N -m "
                          "matryoshka_train run ...")

    check = sub.add_parser("check", help="validate a config, its data and model, without training")
    with_config(check)
    check.add_argument("--show-config", action="store_true",
                       help="also print the resolved config (every default filled in) as YAML")

    ev = sub.add_parser("eval", help="evaluate any sentence-transformers model at every dim (and precision)")
    ev.add_argument("model", help="local directory, hub id, or package:<module>")
    ev.add_argument("--config", required=True, help="an eval-only YAML (evaluation + matryoshka.dims) or a run config")
    ev.add_argument("--output", help="where results.json goes (default outputs/eval/<model>)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (repeatable)")
    ev.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    loudness(ev)

    sw = sub.add_parser("sweep", help="hyperparameter search on Optuna: one mtrain run process per trial")
    sw.add_argument("sweep", help="path to the sweep YAML (base config, search space, objective)")
    sw.add_argument("--storage", help="Optuna RDB URL (default sqlite:///OUTPUT_DIR/study.db); "
                                      "postgresql+psycopg://USER@HOST/DB for many machines (docs/sweeps.md)")
    sw.add_argument("--workers", type=int, default=1, help="trials run in parallel by this process (default 1)")
    sw.add_argument("--debug", action="store_true", help="show tracebacks")

    rep = sub.add_parser("report", help="Markdown report and PNG plots from run or eval directories")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories holding results.json (several: compared)")
    rep.add_argument("--output", help="where report.md and the plots go (default FIRST_RUN_DIR/report)")
    rep.add_argument("--debug", action="store_true", help="show tracebacks")

    push = sub.add_parser("push", help="push a finished run (model, card, results.json) to the Hugging Face Hub")
    push.add_argument("output_dir", metavar="OUTPUT_DIR", help="the training.output_dir of a finished mtrain run")
    push.add_argument("--repo-id", metavar="ID", help="the Hub repo, e.g. your-name/minilm-matryoshka "
                                                      "(default: the run's hub.repo_id)")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_const", const=True, default=None,
                            help="create the repo private (default: the run's hub.private)")
    visibility.add_argument("--public", dest="private", action="store_const", const=False,
                            help="create the repo public")
    push.add_argument("--debug", action="store_true", help="show tracebacks")

    init = sub.add_parser("init", help="copy a shipped recipe (configs/RECIPE.yaml) to start a config from")
    init.add_argument("recipe", help="the recipe's name, e.g. quickstart")
    init.add_argument("dest", nargs="?", help="where to write it (default RECIPE.yaml here; a directory: inside it)")
    init.add_argument("--debug", action="store_true", help="show tracebacks")

    exp = sub.add_parser("export", help="export a trained model to ONNX or OpenVINO (optionally int8), "
                                        "keeping its truncate_dim")
    exp.add_argument("model", metavar="MODEL_DIR",
                     help="a run's output_dir or any sentence-transformers model directory")
    exp.add_argument("--format", required=True, metavar="FORMAT", help="onnx or openvino")
    exp.add_argument("--quantize", metavar="Q", help="int8 variant too: onnx: arm64, avx2, avx512 or avx512_vnni "
                                                     "(dynamic); openvino: int8 (static, calibrated)")
    exp.add_argument("--truncate-dim", type=int, metavar="N",
                     help="embeddings of N dims (default: the model's saved truncate_dim, else full)")
    exp.add_argument("--dest", metavar="DIR", help="where to write (default MODEL_DIR-FORMAT[-dimN], beside it)")
    exp.add_argument("--calibration", metavar="FILE",
                     help="openvino int8: texts to calibrate on (.txt one per line, or .jsonl); default: built-in")
    exp.add_argument("--debug", action="store_true", help="show tracebacks and library logs")

    schema = sub.add_parser("schema", help="write the config's JSON Schema (for editors)")
    schema.add_argument("out", nargs="?", help="the file to write (default: print it)")
    schema.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "quiet", False):
        # reporting.progress.PROGRESS_BARS, the switch of the training bar and ours (an environment
        # variable, so the processes --nproc launches see it too)
        os.environ["MTRAIN_PROGRESS_BARS"] = "0"
        # and every library's own tqdm bar (e.g. sentence-transformers' model card examples): tqdm reads
        # this when it is first imported, which is after this line in a `mtrain` process
        os.environ["TQDM_DISABLE"] = "1"
    _quiet_libraries(args.debug or getattr(args, "verbose", False))
    install_log_filter()
    with redacted_output():
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.verb == "check":
            return _check(args)
        if args.verb == "eval":
            return _eval(args)
        if args.verb == "report":
            return _report(args)
        if args.verb == "sweep":
            return _sweep(args)
        if args.verb == "init":
            return _init(args)
        if args.verb == "push":
            return _push(args)
        if args.verb == "schema":
            return _schema(args)
        if args.verb == "export":
            return _export(args)
        return _run(args)
    except UserError as exc:
        _close_progress_bars()
        if distributed.is_main() or not exc.same_on_every_process:
            tag = "" if distributed.is_main() else f"[process {distributed.rank()}] "
            for problem in exc.problems:
                print(redact(f"error: {tag}{problem}"), file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted before training started; nothing was written to train from", file=sys.stderr)
        return 130


def _check(args: argparse.Namespace) -> int:
    online = hub.go_offline_if_unreachable()
    allocator.default_to_expandable()  # as `mtrain run` does, so the plan prints what a run gets
    from .config.loading import (
        load_config,  # the training stack: see the module docstring
    )
    from .training.check import check
    from .training.stages import check_stages

    config = load_config(args.config, args.overrides)
    if config.stages:
        report = check_stages(config)
    else:
        report = check(config)
    if args.show_config:
        print("Resolved config:")
        for line in report.resolved.rstrip().splitlines():
            print(redact("  " + line))
    hub_line = [] if online else ["Hub: unreachable, so hub models and datasets were not verified (offline check)"]
    if report.problems:
        # the problems first, and the report short enough to keep them on the screen
        for problem in report.problems:
            print(redact(f"error: {problem}"), file=sys.stderr)
        print(f"{len(report.problems)} problem(s): a run would not start.", file=sys.stderr)
        sys.stderr.flush()
        shown = report.lines if args.verbose else [
            line for line in report.lines if not line.startswith((" ", "Speed features"))]
        for line in shown + hub_line:
            print(redact(line))
        for warning in report.warnings:
            print(redact(f"warning: {warning}"))
        if not args.verbose:
            print("(the whole report: mtrain check CONFIG --verbose; the resolved config: --show-config)")
        return 2
    for line in report.lines + hub_line:
        print(redact(line))
    for warning in report.warnings:
        print(redact(f"warning: {warning}"))
    print("OK: a run would start.")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .config.loading import (
        load_config,  # light (pydantic, yaml): see the module docstring
    )

    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume continues the run in training.output_dir and --overwrite replaces it; give one",
                          where="--resume")
    allocator.default_to_expandable()  # before torch loads, and inherited by --nproc's processes
    if args.nproc is not None:
        if args.nproc < 1:
            raise ConfigError(f"--nproc takes a number of processes of 1 or more, got {args.nproc}", where="--nproc")
        if distributed.world_size() > 1:
            raise ConfigError("--nproc inside an already launched process; use either accelerate launch or --nproc",
                              where="--nproc")
        load_config(args.config, args.overrides)  # a broken config fails here, once, not in N processes
        cmd, env = distributed.launch_argv(args.nproc, _without_nproc(args.argv))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)  # the launcher takes this process's place (and its signals)
    hub.go_offline_if_unreachable()
    config = load_config(args.config, args.overrides)
    from .training.entry import run  # the training stack: see the module docstring
    from .training.resume import resume_command

    hint = resume_command(args.config, args.overrides, distributed.world_size(), distributed.local_world_size())
    run(config, overwrite=args.overwrite, resume=args.resume, resume_force=args.resume_force, resume_hint=hint)
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus --nproc N / --nproc=N (what each launched process runs)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def _eval(args: argparse.Namespace) -> int:
    hub.go_offline_if_unreachable()
    from .config.loading import (
        load_eval_config,  # the training stack: see the module docstring
    )
    from .evaluation.standalone import evaluate

    config = load_eval_config(args.config, args.overrides)

    evaluate(args.model, config, args.output)
    return 0


def _report(args: argparse.Namespace) -> int:
    from .reporting.report import write_report  # no torch: see the module docstring

    md = write_report(args.runs, args.output)
    pngs = sorted(p.name for p in md.parent.glob("*.png"))
    print(f"Report written to {md}" + (f" with {', '.join(pngs)}" if pngs else ""))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweep.driver import (  # optuna, no torch: see the module docstring
        load,
        run_sweep,
    )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops a sweep as Ctrl+C does: trials ended and queued again

    signal.signal(signal.SIGTERM, stop)
    allocator.default_to_expandable()  # trials inherit it, in this process or in their own
    sweep = load(args.sweep, storage=args.storage)
    summary = run_sweep(sweep, workers=args.workers)
    return 0 if summary["best"] else 1


def _push(args: argparse.Namespace) -> int:
    hub.go_offline_if_unreachable()  # before huggingface_hub loads: an unreachable Hub fails at once
    from .reporting.publish import push_run  # huggingface_hub, no torch: see the module docstring

    push_run(args.output_dir, args.repo_id, args.private)
    return 0


def _init(args: argparse.Namespace) -> int:
    from .config.recipes import init_recipe  # light (pydantic, yaml): see the module docstring

    target = init_recipe(args.recipe, args.dest)
    print(f"Wrote {target}; check it with: mtrain check {target}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from .config.recipes import json_schema_text  # light (pydantic): see the module docstring

    text = json_schema_text()
    if args.out is None:
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"Wrote the config's JSON Schema to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    hub.go_offline_if_unreachable()
    from .models.export import export_model  # the training stack: see the module docstring

    done = export_model(args.model, args.format, dest=args.dest, quantize=args.quantize,
                        truncate_dim=args.truncate_dim, calibration=args.calibration)
    kind = f"{done.backend}, int8 {'static' if done.backend == 'openvino' else 'dynamic ' + done.quantize}" \
        if done.quantize else f"{done.backend}, float32"
    print(f"Exported {args.model} to {done.dest} ({kind}): {done.file_name}")
    cut = f"truncate_dim {done.truncate_dim}, saved in config_sentence_transformers.json" \
        if done.truncate_dim is not None else "full width"
    print(f"Embeddings: {done.width} of {done.full_dim} dims ({cut})")
    if done.calibration:
        print(f"Calibrated on: {done.calibration}")
    print(f"Check: lowest cosine to the PyTorch model's embeddings of 8 sentences: {done.cosine:.4f}")
    for note in done.notes:
        print(f"note: {note}")
    print(f"Load it with: {done.load_snippet()}")
    return 0


def _close_progress_bars() -> None:
    """A run stopped mid-training leaves the trainer's bar open, without its final newline: close
    it, so the error lines that follow start on lines of their own."""
    tqdm = sys.modules.get("tqdm")  # only if something opened a bar; never imported here for this
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def _quiet_libraries(debug: bool) -> None:
    """Library chatter (deprecation notes, codecarbon info lines) hides what matters."""
    if debug:
        logging.basicConfig(level=logging.INFO)
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for name in ("codecarbon", "sentence_transformers", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # datasets logs an ERROR (with the parser's traceback) for a file it cannot read, then raises;
    # we turn the raise into one line naming the file and line, so its log would only repeat it
    logging.getLogger("datasets").setLevel(logging.CRITICAL)
    # library progress bars for file reading and weight loading; the training bar and ours stay. datasets'
    # are switched off in code, not by its environment variable, which would also refuse the maps that
    # show their bar on purpose (tokenizing: reporting.progress.datasets_bars)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import datasets  # the hub probe has run by now; these two only get their progress bars switched off
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
