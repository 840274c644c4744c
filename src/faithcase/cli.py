"""The faithcase command line: one command per stage, `run` for all, `bench` and `demo` helpers."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from faithcase.errors import FaithcaseError

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

ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML config (default: the embedded demo).")]
OutDirOpt = Annotated[Optional[Path], typer.Option("--out-dir", help="Artifact folder (default outputs/<run name>).")]
Sae1Opt = Annotated[Optional[str], typer.Option("--sae1", help="First SAE folder (overrides sae1.path).")]
Sae2Opt = Annotated[Optional[str], typer.Option("--sae2", help="Second SAE folder (overrides sae2.path).")]
NPairsOpt = Annotated[Optional[int], typer.Option("--n-pairs", help="Pairs per kind: best, worst, random.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:1 …")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun even when the artifact is up to date.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set windows.top=5")]
ScalesOpt = Annotated[Optional[str], typer.Option("--scales", help="auto, or a list like 4,8,16 (× residual norm).")]


@contextmanager
def user_errors():
    """Print a FaithcaseError in one line and exit 2; never a traceback for bad input."""
    try:
        yield
    except FaithcaseError as err:
        err_console.print(f"[bold red]error:[/bold red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _abs(path: str | Path | None) -> str | None:
    if path is None:
        return None
    text = str(path)
    return text if text.startswith("pkg:") else str(Path(text).expanduser().resolve())


def _scales(value: str | None):
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


def runtime(config, out_dir=None, sae1=None, sae2=None, n_pairs=None, device=None, force=False, sets=None,
            scales=None):
    from faithcase.config import load_config
    from faithcase.stages import Runtime

    overrides = {"out_dir": _abs(out_dir), "sae1.path": _abs(sae1), "sae2.path": _abs(sae2),
                 "match.n_pairs": n_pairs, "device": device, "explain.scales": _scales(scales)}
    if sae1 is not None:
        overrides["sae1.format"] = None
    cfg = load_config(config, overrides=overrides, sets=sets)
    _set_threads()
    return Runtime(cfg, console=err_console, force=force)


def _set_threads() -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))


# ================================================================ stages


@app.command()
def match(config: ConfigOpt = None, out_dir: OutDirOpt = None, sae1: Sae1Opt = None, sae2: Sae2Opt = None,
          n_pairs: NPairsOpt = None, force: ForceOpt = False, set_: SetOpt = None):
    """Match the two SAEs' features (Hungarian on decoder cosine similarity); select best/worst/random pairs."""
    from faithcase.stages import run_match

    with user_errors():
        rt = runtime(config, out_dir, sae1, sae2, n_pairs, force=force, sets=set_)
        artifact = run_match(rt)
        print_match(artifact)
        console.print(f"match.json → {rt.path('match.json')}")


@app.command()
def explain(config: ConfigOpt = None, out_dir: OutDirOpt = None, sae1: Sae1Opt = None, sae2: Sae2Opt = None,
            n_pairs: NPairsOpt = None, scales: ScalesOpt = None, device: DeviceOpt = None,
            force: ForceOpt = False, set_: SetOpt = None):
    """Self-explanations by steering the placeholder token, with automatic scale search (--scales auto)."""
    from faithcase.stages import run_explain, run_match

    with user_errors():
        rt = runtime(config, out_dir, sae1, sae2, n_pairs, device, force, set_, scales)
        m = run_match(_not_forced(rt))
        artifact = run_explain(rt, m)
        print_explain(artifact, m)
        console.print(f"explain.json → {rt.path('explain.json')}")


@app.command()
def windows(config: ConfigOpt = None, out_dir: OutDirOpt = None, sae1: Sae1Opt = None, sae2: Sae2Opt = None,
            n_pairs: NPairsOpt = None, device: DeviceOpt = None, force: ForceOpt = False, set_: SetOpt = None):
    """Top-activating windows (mean, density, max), statistics and scoring contexts: one pass for both SAEs."""
    from faithcase.stages import run_match, run_windows

    with user_errors():
        rt = runtime(config, out_dir, sae1, sae2, n_pairs, device, force, set_)
        m = run_match(_not_forced(rt))
        found = run_windows(rt, m)
        for key, artifact in found.items():
            console.print(f"windows_{key}.json → {rt.path(f'windows_{key}.json')} "
                          f"({len(artifact.features)} features, {artifact.n_tokens:,} tokens)")


@app.command()
def embed(config: ConfigOpt = None, out_dir: OutDirOpt = None, sae1: Sae1Opt = None, sae2: Sae2Opt = None,
          n_pairs: NPairsOpt = None, device: DeviceOpt = None, force: ForceOpt = False, set_: SetOpt = None):
    """Eleuther embedding score (AUROC) of every explanation, own and across the pair."""
    from faithcase.artifacts import ExplainArtifact, WindowsArtifact, read_artifact
    from faithcase.stages import EXPLAIN_FILE, run_embed, run_match, windows_file

    with user_errors():
        rt = runtime(config, out_dir, sae1, sae2, n_pairs, device, force, set_)
        m = run_match(_not_forced(rt))
        explain_art = read_artifact(rt.path(EXPLAIN_FILE), ExplainArtifact, "explain")
        found = {k: read_artifact(rt.path(windows_file(k)), WindowsArtifact, "windows") for k in ("sae1", "sae2")}
        artifact = run_embed(rt, m, explain_art, found)
        print_embed(artifact)
        console.print(f"embed.json → {rt.path('embed.json')}")


@app.command()
def assemble(config: ConfigOpt = None, out_dir: OutDirOpt = None, sae1: Sae1Opt = None, sae2: Sae2Opt = None,
             n_pairs: NPairsOpt = None,
             out: Annotated[Optional[Path], typer.Option("--out", help="Case-study JSON path.")] = None,
             force: ForceOpt = False, set_: SetOpt = None):
    """Join every stage into case_study.json (one entry per pair) and summary.json."""
    from faithcase.stages import run_assemble

    with user_errors():
        rt = runtime(config, out_dir, sae1, sae2, n_pairs, force=force, sets=set_)
        if out is not None and not out.is_absolute() and out.parent == Path("."):
            out = rt.out_dir / out  # a bare file name goes into the run folder
        path = run_assemble(rt, out)
        console.print(f"case study → {path}")


@app.command()
def report(config: ConfigOpt = None, out_dir: OutDirOpt = None,
           case_study: Annotated[Optional[Path], typer.Option("--case-study", help="case_study.json to render.")] = None,
           force: ForceOpt = False, set_: SetOpt = None):
    """A static, self-contained HTML report with plots."""
    from faithcase.stages import run_report

    with user_errors():
        rt = runtime(config, out_dir, force=force, sets=set_)
        path = run_report(rt, case_study)
        console.print(f"report → {path}")


@app.command()
def run(config: ConfigOpt = None, out_dir: OutDirOpt = None, sae1: Sae1Opt = None, sae2: Sae2Opt = None,
        n_pairs: NPairsOpt = None, scales: ScalesOpt = None, device: DeviceOpt = None,
        force: ForceOpt = False, set_: SetOpt = None):
    """Every stage in order: match, explain, windows, embed, assemble, report."""
    from faithcase.stages import run_pipeline

    with user_errors():
        rt = runtime(config, out_dir, sae1, sae2, n_pairs, device, force, set_, scales)
        case_study, index = run_pipeline(rt, console)
        console.print(f"[bold]case study[/bold] → {case_study}")
        console.print(f"[bold]report[/bold]     → {index}")


def _not_forced(rt):
    """Upstream stages run when missing or stale but are not forced by a downstream --force."""
    from faithcase.stages import Runtime

    twin = Runtime.__new__(Runtime)
    twin.__dict__.update(rt.__dict__)
    twin.force = False
    return twin


# ================================================================ printing


def print_match(artifact) -> None:
    s = artifact.stats
    table = Table(title=f"{s.n_matched} matched pairs · shared ratio (>{s.threshold}) {s.shared_ratio:.3f} · "
                        f"top-1 ratio {s.top1_ratio:.3f} · mean {s.mean_similarity:.3f}")
    for column in ("kind", "rank", "sae1", "sae2", "cosine"):
        table.add_column(column, justify="right" if column != "kind" else "left")
    for kind in ("best", "worst"):
        for p in artifact.pairs.get(kind, [])[:10]:
            table.add_row(kind, str(p.rank), str(p.index1), str(p.index2), f"{p.similarity:.3f}")
    console.print(table)
    solver = artifact.solver
    proof = "exact" if solver.exact else ("certified" if solver.certified else "not certified")
    console.print(f"solver {solver.name} ({proof}), {solver.seconds:.2f} s; dead features "
                  f"{s.n_dead1} / {s.n_dead2}")


def print_explain(artifact, match_artifact) -> None:
    table = Table(title="self-explanations")
    for column in ("kind", "rank", "sae1 explanation", "scale", "sae2 explanation", "scale "):
        table.add_column(column)
    for p in match_artifact.all_pairs():
        e1 = artifact.features["sae1"].get(str(p.index1))
        e2 = artifact.features["sae2"].get(str(p.index2))
        table.add_row(p.kind, str(p.rank), _explanation(e1), _scale(e1), _explanation(e2), _scale(e2))
    console.print(table)


def _explanation(e) -> str:
    if e is None:
        return "—"
    text = e.explanations[0] if e.explanations else ""
    return f"{text}{' [failed]' if e.failed else ''}"


def _scale(e) -> str:
    return "—" if e is None or e.scale is None else f"{e.scale:g}"


def print_embed(artifact) -> None:
    table = Table(title="embedding scores (AUROC)")
    for column in ("kind", "rank", "sae1", "sae2", "own 1", "own 2", "cross 1→2", "cross 2→1"):
        table.add_column(column)
    for c in artifact.cross:
        own1 = artifact.scores["sae1"][str(c.index1)].auroc
        own2 = artifact.scores["sae2"][str(c.index2)].auroc
        table.add_row(c.kind, str(c.rank), str(c.index1), str(c.index2), _fmt(own1), _fmt(own2),
                      _fmt(c.sae1_on_sae2.auroc), _fmt(c.sae2_on_sae1.auroc))
    console.print(table)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


# ================================================================ bench


@bench_app.command("match")
def bench_match(sizes: Annotated[str, typer.Option(help="Comma-separated feature counts.")] = "2304,4608,14336",
                big: Annotated[bool, typer.Option("--big", help="Also 65,536 × 65,536 (sparse only).")] = False):
    """Dense scipy assignment vs faithcase's certified sparse solver on structured synthetic SAEs."""
    from faithcase.bench_match import run_match_bench

    with user_errors():
        _set_threads()
        run_match_bench(sizes=tuple(int(s) for s in sizes.split(",")), big=big, console=Console(width=160))


@bench_app.command("model")
def bench_model_cmd(config: ConfigOpt = None, n_tokens: int = 4096):
    """Tokens/s of the pass truncated at the hook vs a full forward."""
    from faithcase.lm import bench_model

    with user_errors():
        rt = runtime(config)
        result = bench_model(rt.lm, rt.cfg.hook, n_tokens=n_tokens)
        _print_dict("bench model", result)


@bench_app.command("windows")
def bench_windows_cmd(config: ConfigOpt = None, n_tokens: int = 20_000, n_features: int = 30):
    """Windows stage vs a bare truncated pass and a naive per-feature baseline."""
    from faithcase.bench import bench_windows

    with user_errors():
        rt = runtime(config)
        _print_dict("bench windows", bench_windows(rt, n_tokens=n_tokens, n_features=n_features))


@bench_app.command("explain")
def bench_explain_cmd(config: ConfigOpt = None, n_features: int = 4, n_scales: int = 8):
    """Batched sweep and generation vs a per-(feature, scale) loop."""
    from faithcase.bench import bench_explain

    with user_errors():
        rt = runtime(config)
        _print_dict("bench explain", bench_explain(rt, n_features=n_features, n_scales=n_scales))


@bench_app.command("embed")
def bench_embed_cmd(config: ConfigOpt = None):
    """Contexts/s with and without the text cache."""
    from faithcase.bench import bench_embed

    with user_errors():
        rt = runtime(config)
        _print_dict("bench embed", bench_embed(rt))


def _print_dict(title: str, result: dict) -> None:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:,.3f}" if isinstance(value, float) else str(value))
    console.print(table)


# ================================================================ demo


@demo_app.command("info")
def demo_info():
    """The demo bundle's manifest: corpus, SAE quality, shared-feature ratio."""
    from faithcase.demo.build import bundle_info

    with user_errors():
        _print_manifest(bundle_info())


def _print_manifest(manifest: dict) -> None:
    from faithcase.demo.build import info_rows

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
    force: ForceOpt = False,
):
    """Rebuild the demo bundle: sample the corpus, cache activations, train two TopK SAEs (resumable)."""
    from faithcase.demo.build import build_bundle, settings_with

    with user_errors():
        settings = settings_with(shards, min_heldout_tokens, k, epochs, lr)
        manifest = build_bundle(out_dir, work_dir, settings=settings, force=force, console=err_console)
        _print_manifest(manifest)


def main() -> None:  # pragma: no cover
    app(prog_name="faithcase")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
