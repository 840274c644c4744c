"""The tool commands: `bench`, `demo` and `rehearse` (cli.py registers them on the faithcase
app)."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from faithcase.cli_options import (
    RunOptions,
    console,
    err_console,
    runtime,
    set_threads,
    user_errors,
    with_run_options,
)
from faithcase.render import tables
from faithcase.run.errors import FaithcaseError

bench_app = typer.Typer(no_args_is_help=True,
                        help="Timings as ratios against a baseline measured in the same run.")
demo_app = typer.Typer(no_args_is_help=True,
                       help="The embedded demo bundle: corpora and four TopK SAEs (the faithful "
                            "and the external pair).")


def rehearse(
    work_dir: Annotated[Path, typer.Option(
        "--work-dir",
        help="Model, SAEs, corpus, config and run folder.")] = Path("build/rehearsal"),
    tokens: Annotated[Optional[int], typer.Option(
        help="Corpus tokens of the passes (default 4000).")] = None,
    n_pairs: Annotated[Optional[int], typer.Option(
        "--n-pairs", help="Best, worst and random pairs each (2).")] = None,
    n_stratified: Annotated[Optional[int], typer.Option(
        "--n-stratified", help="Stratified pairs (4).")] = None,
    n_scales: Annotated[Optional[int], typer.Option(
        "--n-scales", help="Steering scales (4).")] = None,
    n_null: Annotated[Optional[int], typer.Option(
        "--n-null", help="Random directions of the failure test (8).")] = None,
    n_samples: Annotated[Optional[int], typer.Option(
        "--n-samples", help="Sampled texts per feature (4).")] = None,
    gpu_check: Annotated[bool, typer.Option(
        "--gpu-check", help="On a GPU: the paper's workload on 200,000 corpus tokens, with peak "
                            "GPU memory per stage; exits 2 without CUDA.")
    ] = False,
):
    """Every stage at the paper's shapes (random-weight Llama-3.2-1B architecture and Llama 3
    tokenizer, two 14,336-feature BatchTopK SAEs, bfloat16) on a reduced workload: time, peak
    memory and projected full-size time per stage."""
    from faithcase.tools.rehearse import REDUCED, gpu_check_preset
    from faithcase.tools.rehearse import rehearse as run_rehearsal

    preset, device, on_gpu = gpu_check_preset() if gpu_check else (REDUCED, "cpu", False)
    given = {"tokens": tokens, "n_pairs": n_pairs, "n_stratified": n_stratified,
             "n_scales": n_scales, "n_null": n_null, "n_samples": n_samples}
    workload = preset | {name: value for name, value in given.items() if value is not None}
    if gpu_check:
        import torch

        print_gpu_facts(torch)
        if not on_gpu:
            err_console.print("[bold red]error:[/bold red] the GPU check needs CUDA, and torch "
                              f"sees none (torch {torch.__version__}, torch.version.cuda "
                              f"{torch.version.cuda}): install a CUDA build of torch, or run "
                              "`faithcase rehearse` for the CPU rehearsal")
            raise typer.Exit(2)
    with user_errors():
        for name in ("tokens", "n_pairs", "n_scales"):
            if workload[name] < 1:
                raise FaithcaseError(f"--{name.replace('_', '-')} must be at least 1, "
                                     f"got {workload[name]}")
        set_threads()
        rows = run_rehearsal(work_dir, workload, err_console, device)
    console.print(_rehearsal_table(rows, workload, device))
    console.print(f"the planted pairs came back as the best pairs; total projected on this "
                  f"machine ({device}): {sum(r['projected'] for r in rows) / 3600:.2f} h")


def print_gpu_facts(torch) -> None:
    """torch's CUDA build and the device, first thing of the GPU check."""
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    console.print(f"torch {torch.__version__}, torch.version.cuda {torch.version.cuda}, "
                  f"device {name}")


def _rehearsal_table(rows: list[dict], workload: dict, device: str):
    from faithcase.tools.rehearse import FULL

    table = tables.table(f"rehearsal at paper shapes on {device}: {workload['tokens']:,} tokens, "
                         f"{workload['n_pairs']} pairs per group + "
                         f"{workload['n_stratified']} stratified, {workload['n_scales']} scales, "
                         f"{workload['n_null']} null directions; projected to "
                         f"{FULL['tokens']:,} tokens, {FULL['n_pairs']} + {FULL['n_stratified']} "
                         f"pairs, {FULL['n_scales']} scales, {FULL['n_null']} null",
                         ["stage", "time s", "of which loading s", "tokens per s",
                          "peak RSS GiB", "peak GPU GiB", "× work", "projected s"])
    for row in rows:
        speed, gpu = row["tokens_per_s"], row["peak_gpu_gib"]
        table.add_row(row["stage"], f"{row['seconds']:.1f}", f"{row['load']:.1f}",
                      f"{speed:,.0f}" if speed is not None else "—",
                      f"{row['peak_rss_gib']:.2f}", f"{gpu:.2f}" if gpu is not None else "—",
                      f"{row['factor']:.0f}", f"{row['projected']:,.0f}")
    return table


# ================================================================ bench


@bench_app.command("match")
def bench_match(sizes: Annotated[str, typer.Option(
                    help="Comma-separated feature counts.")] = "2304,4608,14336",
                big: Annotated[bool, typer.Option(
                    "--big", help="Also 65,536 × 65,536 (sparse only).")] = False):
    """Dense scipy assignment vs faithcase's certified sparse solver on structured synthetic
    SAEs."""
    from faithcase.tools.bench import run_match_bench

    with user_errors():
        set_threads()
        run_match_bench(sizes=tuple(int(s) for s in sizes.split(",")), big=big,
                        console=Console(width=160))


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

    tables.print_dict("bench windows",
                      measure(runtime(opts), n_tokens=n_tokens, n_features=n_features))


@bench_app.command("explain")
@with_run_options
def bench_explain(opts: RunOptions, n_features: int = 4, n_scales: int = 8):
    """Batched sweep and generation vs a per-(feature, scale) loop."""
    from faithcase.tools.bench import bench_explain as measure

    tables.print_dict("bench explain",
                      measure(runtime(opts), n_features=n_features, n_scales=n_scales))


@bench_app.command("describe")
@with_run_options
def bench_describe(opts: RunOptions, n_features: int = 16, n_windows: int = 8):
    """The window explainer on the unhooked model vs inside the bridge, same prompts."""
    from faithcase.tools.bench_describe import bench_describe as measure

    tables.print_dict("bench describe",
                      measure(runtime(opts), n_features=n_features, n_windows=n_windows))


@bench_app.command("matrix")
@with_run_options
def bench_matrix(opts: RunOptions, n_tokens: int = 8192):
    """The matrix's one corpus pass for every SAE vs one pass per pair (default config: the demo's
    four SAEs)."""
    from faithcase.tools.bench_matrix import bench_matrix as measure

    opts.config = opts.config or "pkg:faithcase/configs/matrix.yaml"
    tables.print_dict("bench matrix", measure(runtime(opts), n_tokens=n_tokens))


@bench_app.command("scan")
@with_run_options
def bench_scan(opts: RunOptions, n_tokens: int = 50_000):
    """The scan's sums: matched pairs only, every nearest neighbour streamed, as the scan does."""
    from faithcase.tools.bench_scan import bench_scan as measure

    tables.print_dict("bench scan", measure(runtime(opts), n_tokens=n_tokens))


@bench_app.command("dtype")
@with_run_options
def bench_dtype(opts: RunOptions):
    """Match and scan with both SAEs encoded in float32 and in bfloat16, one corpus pass."""
    from faithcase.tools.bench_dtype import bench_dtype as measure
    from faithcase.tools.bench_dtype import print_dtype_table

    print_dtype_table(measure(runtime(opts)))


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
    if manifest.get("external"):
        _print_quality(manifest["external"], "the external pair (Python documentation)")


def _print_quality(manifest: dict, pair: str = "the faithful pair") -> None:
    """Held-out quality of each SAE against the targets, and the Hungarian shared-feature ratio."""
    saes, match = manifest.get("saes", {}), manifest.get("match", {})
    targets = manifest.get("targets", {})
    if not saes:
        return
    table = Table(title=f"{pair}: held-out quality (filtered tokens)")
    for column in ("SAE", "seed", "k", "FVU", "L0", "dead", "targets met"):
        table.add_column(column, justify="left" if column == "SAE" else "right")
    for name, entry in saes.items():
        heldout = entry.get("heldout", {})
        met = targets.get("met_per_sae", {}).get(name)
        table.add_row(name, str(entry.get("seed", "")), str(entry.get("k", "")),
                      f"{heldout.get('fvu', float('nan')):.4f}",
                      f"{heldout.get('l0', float('nan')):.1f}",
                      f"{100 * heldout.get('dead_fraction', float('nan')):.2f}%",
                      "" if met is None else ("yes" if met else "no"))
    console.print(table)
    if match:
        console.print(f"shared-feature ratio (Hungarian, cos > {match.get('threshold')}): "
                      f"[bold]{match.get('shared_ratio', float('nan')):.4f}[/bold] · "
                      f"pairs with cos ≥ 0.9: {match.get('pairs_cos_ge_0.9')} · "
                      f"mean matched cos: {match.get('mean_similarity', float('nan')):.4f}")


@demo_app.command("external")
def demo_external(
    docs: Annotated[Path, typer.Option(
        "--docs", help="The Python documentation's reStructuredText sources (Debian package "
                       "python3.11-doc).")] = Path("/usr/share/doc/python3.11/html/_sources"),
    work_dir: Annotated[Path, typer.Option(
        "--work-dir", help="Activations and the stage log (the corpus and the built pair go "
                           "beside it, in <work-dir>_corpus and <work-dir>_bundle).")
    ] = Path("build/external"),
    bundle_dir: Annotated[Optional[Path], typer.Option(
        "--bundle-dir", help="The bundle the pair is added to (default: the package's).")] = None,
):
    """The contrast pair: two SAEs on English text the model did not write.

    Seeds 42 and 49 and the faithful pair's recipe, on the Python documentation; added to the
    demo bundle (run it after `faithcase demo build`)."""
    from faithcase.demo import BUNDLE_DIR
    from faithcase.tools.demo.external import build_external

    with user_errors():
        external = build_external(docs, work_dir, bundle_dir or BUNDLE_DIR, console=err_console)
    match = external["match"]
    console.print(f"external pair: shared ratio {match['shared_ratio']:.4f}, top-1 ratio "
                  f"{match['top1_ratio']:.4f}, {external['corpus']['total_tokens']:,} tokens "
                  f"({external['corpus']['licence']})")


@demo_app.command("build")
def demo_build(
    work_dir: Annotated[Path, typer.Option(
        "--work-dir", help="Samples, cached activations and the stage log.")] = Path("build/demo"),
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out-dir", help="Bundle folder (default: the package's demo/bundle).")] = None,
    shards: Annotated[Optional[int], typer.Option(
        "--shards", help="Sample shards of 96 samples (missing ones are sampled).")] = None,
    min_heldout_tokens: Annotated[Optional[int], typer.Option("--min-heldout-tokens")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Latents kept per token (TopK).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr")] = None,
    d_sae: Annotated[Optional[int], typer.Option("--d-sae", help="Latents per SAE.")] = None,
    weights_dtype: Annotated[Optional[str], typer.Option(
        "--weights-dtype", help="Store the SAE weights in float32 or bfloat16.")] = None,
    corpus_from: Annotated[Optional[Path], typer.Option(
        "--corpus-from", help="Take the corpus files of this built bundle as given (no "
                              "sampling).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild every stage.")] = False,
):
    """Rebuild the demo bundle: sample the corpus, cache activations, train two TopK SAEs
    (resumable)."""
    from faithcase.tools.demo.build import build_bundle, settings_with

    with user_errors():
        settings = settings_with(shards, min_heldout_tokens, k, epochs, lr, d_sae, weights_dtype,
                                 str(corpus_from) if corpus_from else None)
        manifest = build_bundle(out_dir, work_dir, settings=settings, force=force,
                                console=err_console)
        _print_manifest(manifest)
