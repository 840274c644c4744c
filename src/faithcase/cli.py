"""The faithcase command line: one command per stage (generated from the pipeline's stage list),
`run` for all of them, `diff`, and the tool commands (`bench`, `demo`, `rehearse`).

A command that writes holds the run folder's lock for its whole run. Errors a user or the machine
can cause print one line and exit 2; Ctrl-C exits 130; `faithcase --debug …` shows tracebacks.
"""

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # library progress bars; the CLI shows its own

from faithcase.cli_options import (  # noqa: E402
    DEBUG,
    RunOptions,
    console,
    describe_os_error,
    err_console,
    pipeline,
    runtime,
    set_threads,
    split_pass,
    user_errors,
    with_run_options,
)
from faithcase.run.errors import FaithcaseError  # noqa: E402

__all__ = ["app", "describe_os_error", "err_console", "set_threads", "split_pass", "user_errors"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Do matched features of two SAEs mean the same thing? Staged, cached "
                       "case studies.")


@app.callback()
def main_options(debug: Annotated[bool, typer.Option(
        "--debug", help="Show the traceback of an unexpected error.")] = False) -> None:
    DEBUG["on"] = DEBUG["on"] or debug


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
        if force or not (graph.is_fresh("matrix") and graph.is_fresh("compare")):
            from faithcase.preflight import Preflight

            refuse_unless_ready(Preflight(rt))  # every SAE, the model, corpus, embedder
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
    from faithcase.preflight import Preflight, check_table, refusal

    preflight = Preflight(runtime(opts))
    checks = preflight.run()
    console.print(check_table(checks))
    if preflight.failed:
        raise refusal(checks)


def preflight_stale(rt, graph) -> None:
    """The check of the components that the stale stages of `graph` need, before any of them
    runs; a fully cached run loads nothing."""
    from faithcase.pipeline import PIPELINE
    from faithcase.preflight import Preflight

    stale = [name for name in PIPELINE.order()
             if name in graph.force or not graph.is_fresh(name)]
    uses = {use for name in stale for use in PIPELINE.stages[name].uses}
    preflight = Preflight(rt)
    wanted = (["model"] if uses & {"model", "corpus"} else []) + \
             (["corpus"] if "corpus" in uses else []) + \
             (preflight.sae_keys() if uses & {"saes", "model"} else []) + \
             (["embedder"] if "embed" in stale else []) + \
             (["window explainer"] if "describe" in stale and rt.cfg.describe.enabled else [])
    refuse_unless_ready(preflight, wanted)


def refuse_unless_ready(preflight, components: list[str] | None = None) -> None:
    """Run the check of `components` (default: all); the table and exit 2 if any fails."""
    from faithcase.preflight import check_table, refusal

    if components == []:
        return
    checks = preflight.run(components)
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

    Timestamps, durations, fingerprints and paths are ignored; an older layout is read through
    its renames (listed)."""
    from faithcase.tools.diff import RENAMES, compare_runs

    with user_errors():
        differences = compare_runs(first, second)
    renames = "; ".join(f"{name}: {', '.join(items)}" for name, items in RENAMES.items())
    console.print(f"[dim]compared after the layout renames: {renames}[/dim]", soft_wrap=True)
    for line in differences[:50]:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"{len(differences)} difference(s)" if differences else "the runs agree")
    raise typer.Exit(1 if differences else 0)


def _register_tools() -> None:
    from faithcase.tools import commands
    from faithcase.tools.config_docs import config_command

    app.add_typer(commands.bench_app, name="bench")
    app.add_typer(commands.demo_app, name="demo")
    app.command()(commands.rehearse)
    app.command("config")(config_command)


_register_tools()


def main() -> None:  # pragma: no cover
    from faithcase.cli import app as registered  # the module, not __main__, holds every command

    registered(prog_name="faithcase")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
