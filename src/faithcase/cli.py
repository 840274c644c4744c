"""The faithcase command line: one command per stage, `run` for all, `bench`, `demo` and `diff` helpers.

Every stage command asks the pipeline graph (`pipeline.py`) for its stage, which runs or reuses
the stages upstream of it. The options every stage command shares are declared once (RUN_OPTIONS).
"""

import inspect
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from faithcase.render import tables
from faithcase.run.errors import FaithcaseError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # library progress bars; the CLI shows its own

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Do matched features of two SAEs mean the same thing? Staged, cached case studies.")
bench_app = typer.Typer(no_args_is_help=True, help="Timings as ratios against a baseline measured in the same run.")
demo_app = typer.Typer(no_args_is_help=True, help="The embedded demo bundle (corpus and two TopK SAEs).")
app.add_typer(bench_app, name="bench")
app.add_typer(demo_app, name="demo")

console = Console()
err_console = Console(stderr=True)


@contextmanager
def user_errors():
    """Print a FaithcaseError in one line and exit 2; never a traceback for bad input."""
    try:
        yield
    except FaithcaseError as err:
        err_console.print(f"[bold red]error:[/bold red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


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
    set_: Optional[list[str]] = None


RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "config": (Optional[str], typer.Option("--config", "-c", help="YAML config (default: the embedded demo).")),
    "out_dir": (Optional[Path], typer.Option("--out-dir", help="Artifact folder (default outputs/<run name>).")),
    "sae1": (Optional[str], typer.Option("--sae1", help="First SAE folder (replaces the config's sae1).")),
    "sae2": (Optional[str], typer.Option("--sae2", help="Second SAE folder (replaces the config's sae2).")),
    "n_pairs": (Optional[int], typer.Option("--n-pairs", help="Pairs per kind: best, worst, random.")),
    "device": (Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:1 …")),
    "scales": (Optional[str], typer.Option("--scales", help="auto, or a list like 4,8,16 (× residual norm).")),
    "force": (bool, typer.Option("--force", help="Rerun this stage even when it is up to date.")),
    "force_all": (bool, typer.Option("--force-all", help="Rerun this stage and every stage upstream of it.")),
    "strict": (bool, typer.Option("--strict", help="A failed load check is an error (exit 2), not a warning.")),
    "set_": (Optional[list[str]], typer.Option("--set", help="Override any config key: --set windows.top=5")),
}


def with_run_options(fn):
    """A command taking (opts: RunOptions, **its own options): the shared options are added to its
    signature, and a FaithcaseError anywhere in it becomes a one-line error with exit code 2."""
    own = [p for name, p in inspect.signature(fn).parameters.items() if name != "opts"]
    hints = {name: hint for name, hint in get_type_hints(fn, include_extras=True).items() if name != "opts"}
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=RunOptions.__dataclass_fields__[name].default,
                                annotation=Annotated[hint, option]) for name, (hint, option) in RUN_OPTIONS.items()]

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
        raise FaithcaseError(f"--scales must be auto or numbers separated by commas, got {value!r}") from None
    if any(s <= 0 for s in scales):
        raise FaithcaseError(f"--scales must be positive, got {value!r}")
    return scales


def runtime(opts: RunOptions):
    """The Runtime of these options: the config with the command-line overrides applied."""
    from faithcase.config import load_config
    from faithcase.run.runtime import Runtime

    overrides = {"out_dir": _absolute(opts.out_dir), "match.n_pairs": opts.n_pairs, "device": opts.device,
                 "explain.scales": parse_scales(opts.scales), "scan.strict": opts.strict or None}
    for key in ("sae1", "sae2"):
        path = getattr(opts, key)
        if path is not None:  # a new SAE: its format is detected again
            overrides[key] = {"path": _absolute(path)}
    cfg = load_config(opts.config, overrides=overrides, sets=opts.set_)
    _set_threads()
    return Runtime(cfg, console=err_console)


def stage(opts: RunOptions, name: str):
    """(the stage's value, the graph run): the graph runs or reuses every stage up to `name`;
    the run's `ctx` is the Runtime."""
    from faithcase.pipeline import PIPELINE, pipeline_run

    rt = runtime(opts)
    force = PIPELINE.order([name]) if opts.force_all else [name] if opts.force else []
    graph = pipeline_run(rt, tuple(force))
    return graph.get(name), graph


def _set_threads() -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))


# ================================================================ stages


def _stage_command(name: str, doc: str, printer: str) -> None:
    """`faithcase <name>`: the stage's value from the graph, printed, then the paths of its files."""

    def command(opts: RunOptions):
        import importlib

        value, graph = stage(opts, name)
        show = getattr(importlib.import_module(f"faithcase.stages.{name}"), printer)
        show(value, {i: graph.get(i) for i in graph.graph.stages[name].inputs})
        for path in graph.graph.stages[name].files(graph.ctx):
            console.print(f"{name} → {path}")

    command.__name__, command.__doc__ = name, doc
    app.command(name)(with_run_options(command))


_stage_command("match", "Match the two SAEs' features: Hungarian assignment on decoder cosine similarity, and the "
               "paper's statistics.", "print_match")
_stage_command("scan", "The first corpus pass: each SAE's load check (FVU, L0) and the activation agreement of "
               "every matched pair.", "print_scan")
_stage_command("pairs", "The pairs of the case study: best, worst, random and stratified over the cosine range.",
               "print_pairs")
_stage_command("explain", "Self-explanations by steering the placeholder token, with automatic scale search "
               "(--scales auto) and a failure test calibrated on random directions.", "print_explain")
_stage_command("windows", "Top-activating windows (mean, density, max), statistics and scoring contexts: one pass for "
               "both SAEs.", "print_windows")
_stage_command("embed", "Eleuther embedding score (AUROC) of every explanation, its baseline and null, own and "
               "across the pair.", "print_embed")


@app.command()
@with_run_options
def assemble(opts: RunOptions,
             out: Annotated[Optional[Path], typer.Option("--out", help="Also write the case study here.")] = None):
    """Join every stage into case_study.json (one entry per pair) and summary.json."""
    from faithcase.artifacts import CASE_STUDY_FILE
    from faithcase.run.store import write_bytes_atomic

    (_, summary), graph = stage(opts, "assemble")
    from faithcase.stages.assemble import print_summary

    print_summary(summary)
    path = graph.ctx.path(CASE_STUDY_FILE)
    if out is not None:
        target = graph.ctx.out_dir / out if not out.is_absolute() and out.parent == Path(".") else out
        if target.resolve() != path.resolve():  # a bare file name lands in the run folder
            write_bytes_atomic(target, path.read_bytes())
            path = target
    console.print(f"case study → {path}")


@app.command()
@with_run_options
def report(opts: RunOptions, case_study: Annotated[Optional[Path], typer.Option(
        "--case-study", help="Render this case_study.json (summary.json beside it) instead of the run's.")] = None):
    """A static, self-contained HTML report with plots."""
    if case_study is not None:
        from faithcase.stages.assemble import read_case_study
        from faithcase.stages.report import build_report

        cases, summary = read_case_study(case_study.parent, cases_name=case_study.name)
        path = build_report(case_study.parent, cases, summary)
    else:
        path, _ = stage(opts, "report")
    console.print(f"report → {path}")


@app.command()
@with_run_options
def run(opts: RunOptions):
    """Every stage in order: match, scan, pairs, explain, windows, embed, assemble, report."""
    from faithcase.pipeline import STAGES, pipeline_run

    rt = runtime(opts)
    graph = pipeline_run(rt, STAGES if opts.force or opts.force_all else ())
    for i, name in enumerate(STAGES, start=1):
        console.rule(f"[bold]{i}/{len(STAGES)} {name}")
        graph.get(name)
    from faithcase.stages.assemble import print_summary

    print_summary(graph.get("assemble")[1])
    console.print(f"[bold]case study[/bold] → {rt.path('case_study.json')}")
    console.print(f"[bold]report[/bold]     → {graph.get('report')}")


@app.command()
def diff(first: Path, second: Path):
    """Compare the artifacts of two run folders, number by number (timestamps, durations, paths ignored)."""
    from faithcase.tools.diff import compare_runs

    with user_errors():
        differences = compare_runs(first, second)
    for line in differences[:50]:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"{len(differences)} difference(s)" if differences else "the runs agree")
    raise typer.Exit(1 if differences else 0)


@app.command()
def rehearse(
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Model, SAEs, corpus, config and run folder.")] = Path("build/rehearsal"),
    tokens: Annotated[Optional[int], typer.Option(help="Corpus tokens of the passes (default 4000).")] = None,
    n_pairs: Annotated[Optional[int], typer.Option("--n-pairs", help="Best, worst and random pairs each (2).")] = None,
    n_stratified: Annotated[Optional[int], typer.Option("--n-stratified", help="Stratified pairs (4).")] = None,
    n_scales: Annotated[Optional[int], typer.Option("--n-scales", help="Steering scales (4).")] = None,
    n_null: Annotated[Optional[int], typer.Option("--n-null", help="Random directions of the failure test (8).")] = None,
    n_samples: Annotated[Optional[int], typer.Option("--n-samples", help="Sampled texts per feature (4).")] = None,
):
    """Every stage at the paper's shapes (random-weight Llama-3.2-1B architecture, two 14,336-feature
    BatchTopK SAEs, bfloat16) on a reduced workload: time, peak RSS and projected full-size time per stage."""
    from faithcase.tools.rehearse import FULL, REDUCED
    from faithcase.tools.rehearse import rehearse as run_rehearsal

    given = {"tokens": tokens, "n_pairs": n_pairs, "n_stratified": n_stratified, "n_scales": n_scales,
             "n_null": n_null, "n_samples": n_samples}
    workload = REDUCED | {name: value for name, value in given.items() if value is not None}
    with user_errors():
        for name in ("tokens", "n_pairs", "n_scales"):
            if workload[name] < 1:
                raise FaithcaseError(f"--{name.replace('_', '-')} must be at least 1, got {workload[name]}")
        _set_threads()
        rows = run_rehearsal(work_dir, workload, err_console)
    table = tables.table(f"rehearsal at paper shapes: {workload['tokens']:,} tokens, {workload['n_pairs']} pairs per group + "
                   f"{workload['n_stratified']} stratified, {workload['n_scales']} scales, {workload['n_null']} null "
                   f"directions; projected to {FULL['tokens']:,} tokens, {FULL['n_pairs']} + {FULL['n_stratified']} "
                   f"pairs, {FULL['n_scales']} scales, {FULL['n_null']} null",
                   ["stage", "time s", "of which loading s", "peak RSS GiB", "× work", "projected s"])
    for row in rows:
        table.add_row(row["stage"], f"{row['seconds']:.1f}", f"{row['load']:.1f}", f"{row['peak_rss_gib']:.2f}",
                      f"{row['factor']:.0f}", f"{row['projected']:,.0f}")
    console.print(table)
    console.print(f"the planted pairs came back as the best pairs; total projected on this machine: "
                  f"{sum(r['projected'] for r in rows) / 3600:.1f} h")


# ================================================================ printing


# ================================================================ bench


@bench_app.command("match")
def bench_match(sizes: Annotated[str, typer.Option(help="Comma-separated feature counts.")] = "2304,4608,14336",
                big: Annotated[bool, typer.Option("--big", help="Also 65,536 × 65,536 (sparse only).")] = False):
    """Dense scipy assignment vs faithcase's certified sparse solver on structured synthetic SAEs."""
    from faithcase.tools.bench import run_match_bench

    with user_errors():
        _set_threads()
        run_match_bench(sizes=tuple(int(s) for s in sizes.split(",")), big=big, console=Console(width=160))


@bench_app.command("model")
@with_run_options
def bench_model(opts: RunOptions, n_tokens: int = 4096):
    """Tokens/s of the pass truncated at the hook vs a full forward."""
    from faithcase.tools.bench import bench_model as measure

    rt = runtime(opts)
    tables.print_dict("bench model", measure(rt.lm, rt.cfg.hook, n_tokens=n_tokens))


@bench_app.command("windows")
@with_run_options
def bench_windows(opts: RunOptions, n_tokens: int = 20_000, n_features: int = 30):
    """Windows stage vs a bare truncated pass and a naive per-feature baseline."""
    from faithcase.tools.bench import bench_windows as measure

    tables.print_dict("bench windows", measure(runtime(opts), n_tokens=n_tokens, n_features=n_features))


@bench_app.command("explain")
@with_run_options
def bench_explain(opts: RunOptions, n_features: int = 4, n_scales: int = 8):
    """Batched sweep and generation vs a per-(feature, scale) loop."""
    from faithcase.tools.bench import bench_explain as measure

    tables.print_dict("bench explain", measure(runtime(opts), n_features=n_features, n_scales=n_scales))


@bench_app.command("embed")
@with_run_options
def bench_embed(opts: RunOptions):
    """Contexts/s with and without the text cache."""
    from faithcase.tools.bench import bench_embed as measure

    tables.print_dict("bench embed", measure(runtime(opts)))


# ================================================================ demo


@demo_app.command("info")
def demo_info():
    """The demo bundle's manifest: corpus, SAE quality, shared-feature ratio."""
    from faithcase.tools.demo.build import bundle_info

    with user_errors():
        _print_manifest(bundle_info())


def _print_manifest(manifest: dict) -> None:
    from faithcase.tools.demo.build import info_rows

    table = Table(title="demo bundle manifest", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key, value in info_rows(manifest):
        table.add_row(key, value)
    console.print(table)
    _print_quality(manifest)


def _print_quality(manifest: dict) -> None:
    """Held-out quality of each SAE against the targets, and the Hungarian shared-feature ratio."""
    saes, match, targets = manifest.get("saes", {}), manifest.get("match", {}), manifest.get("targets", {})
    if not saes:
        return
    table = Table(title="held-out quality (filtered tokens)")
    for column in ("SAE", "seed", "k", "FVU", "L0", "dead", "targets met"):
        table.add_column(column, justify="left" if column == "SAE" else "right")
    for name, entry in saes.items():
        heldout = entry.get("heldout", {})
        met = targets.get("met_per_sae", {}).get(name)
        table.add_row(name, str(entry.get("seed", "")), str(entry.get("k", "")), f"{heldout.get('fvu', float('nan')):.4f}",
                      f"{heldout.get('l0', float('nan')):.1f}", f"{100 * heldout.get('dead_fraction', float('nan')):.2f}%",
                      "" if met is None else ("yes" if met else "no"))
    console.print(table)
    if match:
        console.print(f"shared-feature ratio (Hungarian, cos > {match.get('threshold')}): "
                      f"[bold]{match.get('shared_ratio', float('nan')):.4f}[/bold] · "
                      f"pairs with cos ≥ 0.9: {match.get('pairs_cos_ge_0.9')} · "
                      f"mean matched cos: {match.get('mean_similarity', float('nan')):.4f}")


@demo_app.command("build")
def demo_build(
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Samples, cached activations and the stage log.")] = Path("build/demo"),
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Bundle folder (default: the package's demo/bundle).")] = None,
    shards: Annotated[Optional[int], typer.Option("--shards", help="Sample shards of 96 samples (missing ones are sampled).")] = None,
    min_heldout_tokens: Annotated[Optional[int], typer.Option("--min-heldout-tokens")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Latents kept per token (TopK).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild every stage.")] = False,
):
    """Rebuild the demo bundle: sample the corpus, cache activations, train two TopK SAEs (resumable)."""
    from faithcase.tools.demo.build import build_bundle, settings_with

    with user_errors():
        settings = settings_with(shards, min_heldout_tokens, k, epochs, lr)
        manifest = build_bundle(out_dir, work_dir, settings=settings, force=force, console=err_console)
        _print_manifest(manifest)


def main() -> None:  # pragma: no cover
    app(prog_name="faithcase")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
