"""The faithcase command line: one command per stage (generated from the pipeline's stage list),
`run` for all of them, `diff`, and the tool commands (`bench`, `demo`, `rehearse`).

A command that writes holds the run folder's lock for its whole run. Errors a user or the machine
can cause print one line and exit 2; Ctrl-C exits 130; `faithcase --debug …` shows tracebacks.
"""

import errno
import inspect
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, get_type_hints

import click
import typer
from rich.console import Console

from faithcase.run.errors import FaithcaseError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # library progress bars; the CLI shows its own

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Do matched features of two SAEs mean the same thing? Staged, cached "
                       "case studies.")
console = Console()
err_console = Console(stderr=True)
DEBUG = {"on": bool(os.environ.get("FAITHCASE_DEBUG"))}


@app.callback()
def main_options(debug: Annotated[bool, typer.Option(
        "--debug", help="Show the traceback of an unexpected error.")] = False) -> None:
    DEBUG["on"] = DEBUG["on"] or debug


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)


def describe_os_error(err: OSError) -> str:
    """One line for an error of the machine: what failed, on which file, and what to do."""
    where = f" {err.filename}" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on the device writing{where}: free some space or choose another " \
               "--out-dir"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where}: check its permissions or choose another --out-dir"
    if err.errno == errno.EROFS:
        return f"read-only file system:{where}: choose another --out-dir"
    return f"{err.strerror or type(err).__name__}:{where}"


@contextmanager
def user_errors():
    """Errors a user or the machine causes become one line and exit 2; Ctrl-C exits 130; any
    other exception is a bug: one line, exit 1, and the traceback under --debug."""
    from faithcase.run.graph import failed_stage

    try:
        yield
    except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
        raise
    except FaithcaseError as err:
        _error(str(err))
        raise typer.Exit(2) from None
    except KeyboardInterrupt as err:
        stage = failed_stage(err)
        where = f" during {stage}" if stage else ""
        err_console.print(f"interrupted{where}; finished stages are kept")
        raise typer.Exit(130) from None
    except OSError as err:
        if DEBUG["on"]:
            raise
        _error(describe_os_error(err))
        raise typer.Exit(2) from None
    except Exception as err:  # noqa: BLE001 - anything else is a bug in faithcase
        if DEBUG["on"]:
            raise
        _error(f"internal error {type(err).__name__}: {' '.join(str(err).split())[:300]} "
               "(a bug: rerun with `faithcase --debug …` for the traceback)")
        raise typer.Exit(1) from None


# ================================================================ shared options


@dataclass
class RunOptions:
    config: Optional[str] = None
    out_dir: Optional[Path] = None
    sae1: Optional[str] = None
    sae2: Optional[str] = None
    n_pairs: Optional[int] = None
    device: Optional[str] = None
    scales: Optional[str] = None
    force: bool = False
    force_all: bool = False
    strict: bool = False
    no_wait: bool = False
    set_: Optional[list[str]] = None


def _option(*names: str, help: str):
    return typer.Option(*names, help=help)


RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "config": (Optional[str], _option("--config", "-c", help="YAML config (default: the demo).")),
    "out_dir": (Optional[Path], _option("--out-dir",
                                        help="Run folder (default outputs/<run name>).")),
    "sae1": (Optional[str], _option("--sae1",
                                    help="First SAE folder (replaces the config's sae1).")),
    "sae2": (Optional[str], _option("--sae2",
                                    help="Second SAE folder (replaces the config's sae2).")),
    "n_pairs": (Optional[int], _option("--n-pairs", help="Pairs per kind: best, worst, random.")),
    "device": (Optional[str], _option("--device", help="auto, cpu, cuda, cuda:1 …")),
    "scales": (Optional[str], _option("--scales", help="auto, or a list like 4,8,16 (× norm).")),
    "force": (bool, _option("--force", help="Rerun this stage even when it is up to date.")),
    "force_all": (bool, _option("--force-all", help="Rerun this stage and every stage upstream.")),
    "strict": (bool, _option("--strict", help="A failed load check or an edited artifact is an "
                                               "error (exit 2), not a warning and a rerun.")),
    "no_wait": (bool, _option("--no-wait", help="Fail at once when another run holds the folder.")),
    "set_": (Optional[list[str]], _option("--set", help="Any config key: --set windows.top=5")),
}


def with_run_options(fn):
    """A command taking (opts: RunOptions, **its own options): the shared options are added to its
    signature, and errors become one line (see `user_errors`)."""
    own = [p for name, p in inspect.signature(fn).parameters.items() if name != "opts"]
    hints = {name: hint for name, hint in get_type_hints(fn, include_extras=True).items()
             if name != "opts"}
    defaults = RunOptions.__dataclass_fields__
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                default=defaults[name].default,
                                annotation=Annotated[hint, option])
              for name, (hint, option) in RUN_OPTIONS.items()]

    def command(**kwargs):
        opts = RunOptions(**{name: kwargs.pop(name) for name in RUN_OPTIONS})
        with user_errors():
            return fn(opts, **kwargs)

    command.__name__, command.__doc__ = fn.__name__, fn.__doc__
    command.__signature__ = inspect.Signature(own + shared)
    command.__annotations__ = hints | {p.name: p.annotation for p in shared}
    return command


def _absolute(path: str | Path | None) -> str | None:
    if path is None:
        return None
    text = str(path)
    return text if text.startswith("pkg:") else str(Path(text).expanduser().resolve())


def parse_scales(value: str | None):
    if value is None:
        return None
    if value.strip() == "auto":
        return "auto"
    parts = [p for p in value.replace(" ", "").split(",") if p]
    if not parts:
        raise FaithcaseError("--scales is empty: give auto or a list like 4,8,16")
    try:
        scales = [float(p) for p in parts]
    except ValueError:
        raise FaithcaseError(f"--scales must be auto or numbers separated by commas, "
                             f"got {value!r}") from None
    if any(s <= 0 for s in scales):
        raise FaithcaseError(f"--scales must be positive, got {value!r}")
    return scales


def runtime(opts: RunOptions):
    """The Runtime of these options: the config with the command-line overrides applied."""
    from faithcase.config import load_config
    from faithcase.run.runtime import Runtime

    overrides = {"out_dir": _absolute(opts.out_dir), "pairs.n_pairs": opts.n_pairs,
                 "device": opts.device, "explain.scales": parse_scales(opts.scales),
                 "scan.strict": opts.strict or None}
    for key in ("sae1", "sae2"):
        path = getattr(opts, key)
        if path is not None:  # a new SAE: its format is detected again
            overrides[key] = {"path": _absolute(path)}
    cfg = load_config(opts.config, overrides=overrides, sets=opts.set_)
    set_threads()
    cfg, console_of_rank = split_pass(cfg)
    return Runtime(cfg, console=console_of_rank)


def split_pass(cfg):
    """Under torchrun (WORLD_SIZE > 1): join the process group; each rank on its own GPU; ranks
    other than 0 work quietly in .shards/rank<r>/ of the run folder (run/shards.py)."""
    from faithcase.run import shards

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return cfg, err_console
    from faithcase.model.lm import resolve_device

    device = resolve_device(cfg.device)
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    shard = shards.init_from_env(device)
    update = {"device": device}
    if shard.rank > 0:
        update["out_dir"] = str((cfg.output_dir() / ".shards" / f"rank{shard.rank}").resolve())
    return cfg.model_copy(update=update), (err_console if shard.rank == 0 else
                                           Console(stderr=True, quiet=True))


@contextmanager
def pipeline(opts: RunOptions, force: tuple[str, ...] = (),
             targets: tuple[str, ...] | None = None, rt=None):
    """The pipeline's graph run on these options' run folder, under the folder's lock; the
    embedder is checked up front when reaching `targets` (default: all) runs embed."""
    from faithcase.pipeline import open_run

    with open_run(rt or runtime(opts), force, strict=opts.strict, wait=not opts.no_wait,
                  targets=targets) as graph:
        yield graph


def set_threads() -> None:
    """Every core (FAITHCASE_THREADS to choose), shared among torchrun's local processes."""
    import torch

    cores = int(os.environ.get("FAITHCASE_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


# ================================================================ stages


def _forced(opts: RunOptions, name: str) -> tuple[str, ...]:
    from faithcase.pipeline import PIPELINE

    if opts.force_all:
        return tuple(PIPELINE.order([name]))
    return (name,) if opts.force else ()


def _stage_command(stage) -> None:
    """`faithcase <stage>`: the stage's value from the graph, printed, then the paths of its
    files."""

    def command(opts: RunOptions):
        with pipeline(opts, _forced(opts, stage.name), targets=(stage.name,)) as graph:
            value = graph.get(stage.name)
            if stage.printer:
                stage.printer(value, {name: graph.get(name) for name in stage.inputs})
            for path in graph.files(stage.name):
                console.print(f"{stage.name} → {path}")

    command.__name__, command.__doc__ = stage.name, stage.doc
    app.command(stage.name)(with_run_options(command))


def _register_stages() -> None:
    from faithcase.pipeline import PIPELINE

    for name in PIPELINE.order():
        if name not in ("assemble", "report"):
            _stage_command(PIPELINE.stages[name])


_register_stages()


@app.command()
@with_run_options
def assemble(opts: RunOptions, out: Annotated[Optional[Path], typer.Option(
        "--out", help="Also write the case study here (its summary beside it).")] = None):
    """Join every stage into case_study.json (one entry per pair) and summary.json."""
    from faithcase.artifacts import CASE_STUDY_FILE, SUMMARY_FILE
    from faithcase.run.store import StagedFiles
    from faithcase.stages.assemble import print_summary, summary_path

    with pipeline(opts, _forced(opts, "assemble")) as graph:
        _, summary = graph.get("assemble")
        print_summary(summary)
        path = graph.folder / CASE_STUDY_FILE
        if out is not None:
            bare = not out.is_absolute() and out.parent == Path(".")
            target = graph.folder / out if bare else out.expanduser()
            if target.resolve() != path.resolve():
                staged = StagedFiles()
                staged.add(target, path.read_bytes())
                staged.add(summary_path(target), (graph.folder / SUMMARY_FILE).read_bytes())
                staged.commit()
                path = target
    console.print(f"case study → {path}")


@app.command()
@with_run_options
def report(opts: RunOptions, case_study: Annotated[Optional[Path], typer.Option(
        "--case-study", help="Render this case_study.json (its summary beside it) instead of "
                             "the run's.")] = None):
    """A static, self-contained HTML report with plots."""
    if case_study is None:
        with pipeline(opts, _forced(opts, "report")) as graph:
            path = graph.get("report")
    else:
        from faithcase.run.lock import RunLock
        from faithcase.stages.assemble import read_case_study
        from faithcase.stages.report import build_report

        case_study = case_study.expanduser()
        cases, summary = read_case_study(case_study.parent, cases_name=case_study.name)
        with RunLock(case_study.parent, wait=not opts.no_wait, report=err_console.print):
            path = build_report(case_study.parent, cases, summary)
    console.print(f"report → {path}")


@app.command()
@with_run_options
def matrix(opts: RunOptions):
    """Every pair of the config's SAEs, matched and compared on one corpus pass.

    Shared ratio, top-1 ratios and activation agreement: matrix.json, heatmaps and the
    seed-stability table."""
    from faithcase.pipeline import MANY_SAES, open_run
    from faithcase.stages.matrix import print_matrix

    rt = runtime(opts)
    force = ("matrix",) if opts.force or opts.force_all else ()
    with open_run(rt, force, strict=opts.strict, wait=not opts.no_wait, targets=("matrix",),
                  graph=MANY_SAES) as graph:
        print_matrix(graph.get("matrix"))
        for path in graph.files("matrix"):
            console.print(f"matrix → {path}")


def run_studies_command(opts: RunOptions, rt) -> None:
    """`faithcase run` on a config with studies: the matrix, each study, the comparison."""
    from faithcase.pipeline import MANY_SAES, STAGES, open_run
    from faithcase.stages.matrix import print_matrix
    from faithcase.studies import run_studies

    force = STAGES if opts.force or opts.force_all else ()
    with open_run(rt, ("matrix", "compare") if force else (), strict=opts.strict,
                  wait=not opts.no_wait, graph=MANY_SAES) as graph:
        console.rule("[bold]matrix")
        print_matrix(graph.get("matrix"))
        total = len(rt.cfg.studies)
        run_studies(rt, force, opts.strict, not opts.no_wait,
                    each=lambda i, a, b: console.rule(f"[bold]study {i}/{total}: {a} × {b}"))
        graph.get("compare")
        console.print(f"[bold]comparison[/bold] → {graph.folder / 'comparison.html'}")


@app.command()
@with_run_options
def check(opts: RunOptions):
    """Load every component of the config on its device and try it once (preflight).

    The model (a forward to the hook), the corpus, each SAE (the load check on a few hundred
    tokens), the embedder (its self-test), the window explainer: one table; exit 2 if any fails."""
    from faithcase.run.preflight import Preflight, check_table, refusal

    preflight = Preflight(runtime(opts))
    checks = preflight.run()
    console.print(check_table(checks))
    if preflight.failed:
        raise refusal(checks)


def preflight_stale(rt, graph) -> None:
    """The check of the components that the stale stages of `graph` need, before any of them
    runs; a fully cached run loads nothing."""
    from faithcase.pipeline import PIPELINE
    from faithcase.run.preflight import Preflight, check_table, refusal

    stale = [name for name in PIPELINE.order()
             if name in graph.force or not graph.is_fresh(name)]
    uses = {use for name in stale for use in PIPELINE.stages[name].uses}
    preflight = Preflight(rt)
    wanted = (["model"] if uses & {"model", "corpus"} else []) + \
             (["corpus"] if "corpus" in uses else []) + \
             (preflight.sae_keys() if uses & {"saes", "model"} else []) + \
             (["embedder"] if "embed" in stale else []) + \
             (["window explainer"] if "describe" in stale and rt.cfg.describe.enabled else [])
    if not wanted:
        return
    checks = preflight.run(wanted)
    if preflight.failed:
        console.print(check_table(checks, "faithcase check (before the run)"))
        raise refusal(checks)


@app.command()
@with_run_options
def run(opts: RunOptions):
    """Every stage in order; with `studies` in the config, the matrix, each study, the comparison.

    match, scan, pairs, explain, windows, describe, embed, assemble, report."""
    from faithcase.artifacts import CASE_STUDY_FILE
    from faithcase.pipeline import STAGES
    from faithcase.stages.assemble import print_summary

    rt = runtime(opts)
    if rt.cfg.studies:
        return run_studies_command(opts, rt)
    rt.cfg.sae_config("sae1")  # a many-SAE config without a pair: one line, before any work
    with pipeline(opts, STAGES if opts.force or opts.force_all else (), rt=rt) as graph:
        preflight_stale(rt, graph)
        for i, name in enumerate(STAGES, start=1):
            console.rule(f"[bold]{i}/{len(STAGES)} {name}")
            graph.get(name)
        print_summary(graph.get("assemble")[1])
        console.print(f"[bold]case study[/bold] → {graph.folder / CASE_STUDY_FILE}")
        console.print(f"[bold]report[/bold]     → {graph.get('report')}")


@app.command()
def diff(first: Path, second: Path):
    """Compare the artifacts of two run folders, number by number.

    Timestamps, durations, fingerprints and paths are ignored."""
    from faithcase.tools.diff import compare_runs

    with user_errors():
        differences = compare_runs(first, second)
    for line in differences[:50]:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"{len(differences)} difference(s)" if differences else "the runs agree")
    raise typer.Exit(1 if differences else 0)


from faithcase.tools import commands  # noqa: E402,F401 - registers bench, demo, rehearse


def main() -> None:  # pragma: no cover
    from faithcase.cli import app as registered  # the module, not __main__, holds every command

    registered(prog_name="faithcase")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
