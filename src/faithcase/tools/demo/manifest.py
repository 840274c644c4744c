"""The bundle's manifest: held-out quality, shared features between the seeds, sizes, settings;
and reading it back (`bundle_info`, `info_rows` for `faithcase demo info`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from faithcase.demo import BUNDLE_DIR, MANIFEST_FILE
from faithcase.run.errors import FaithcaseError
from faithcase.run.store import sha256_file, write_bytes_atomic
from faithcase.tools.demo.settings import (
    ACTS_HELDOUT,
    HELDOUT_FILE,
    MODEL_NAME,
    TARGET_DEAD,
    TARGET_FVU,
    TARGET_PAIRS_090,
    TRAIN_FILE,
    sae_name,
)

INPUT_SCALING = "mean squared norm d_in, folded into the weights"
CORPUS_COUNTS = ("sampled_tokens", "kept_tokens", "train_samples", "heldout_samples",
                 "train_tokens", "heldout_tokens")


def trainer_path() -> str:
    """The trainer's import path, read off the function itself (a move cannot leave it stale)."""
    from faithcase.tools.demo.train import train_topk_sae

    return f"{train_topk_sae.__module__}.{train_topk_sae.__qualname__}"


def write_manifest(b, up: dict) -> dict:
    """The manifest stage of the build `b` (a `_Builder`): measured on the shipped SAEs.
    `up` holds the SAE stages' records."""
    import torch

    s = b.settings
    start = time.perf_counter()
    # not inputs of this stage (that would change its key): values of the same run
    corpus, acts = b.graph_run.get("corpus"), b.graph_run.get("activations")
    heldout = torch.load(b.work_dir / ACTS_HELDOUT)
    saes, quality = _heldout_quality(b, heldout, b.sae_folder)
    with b.console.status("matching the two decoders …"):
        match = _match_record(saes, s.seeds, s.match_threshold)
    storage = None
    if s.weights_dtype != "float32":  # what storing the weights in another dtype changes
        trained, trained_quality = _heldout_quality(b, heldout, b.trained_folder)
        storage = {dtype: {"heldout": q, "match": m} for dtype, q, m in (
            ("float32", trained_quality, _match_record(trained, s.seeds, s.match_threshold)),
            (s.weights_dtype, quality, match))}
    build_seconds = _build_seconds(b.graph_run.ledger.entries, start)
    manifest = {
        "model": _model_record(b.model_file(), s.hook),
        "sampling": asdict(s.sampling),
        "corpus": _corpus_record(corpus, s.filters),
        "activations": {"seq_len": s.seq_len, "batch_size": s.pass_batch_size,
                        "train": acts["train"], "heldout": acts["heldout"]},
        "outlier_rule": {"norm_ratio": s.norm_ratio, "exclude_bos": s.exclude_bos},
        "seeds": list(s.seeds),
        "training": asdict(s.training) | {"trainer": trainer_path(),
                                          "input_scaling": INPUT_SCALING},
        "saes": _sae_records(saes, quality, up, s.seeds),
        "match": match,
        "weights_dtype": s.weights_dtype,
        "storage_comparison": storage,
        "targets": targets(quality, match["pairs_cos_ge_0.9"]),
        "build_seconds": build_seconds,
    }
    manifest["bundle_bytes"] = bundle_bytes(b.out_dir)  # without the manifest itself
    text = json.dumps(manifest, indent=2).encode() + b"\n"
    write_bytes_atomic(b.out_dir / MANIFEST_FILE, text)
    return manifest


def _heldout_quality(b, heldout, folder) -> tuple[dict, dict]:
    """The SAEs in `folder(seed)` (as shipped: read back from the bundle), by seed, and their
    held-out quality."""
    from faithcase.saes import load_sae
    from faithcase.tools.demo.train import sae_quality

    saes, quality = {}, {}
    for seed in b.settings.seeds:
        name = sae_name(seed)
        saes[seed] = load_sae(folder(seed))
        with b.console.status(f"held-out quality of {name} …"):
            q = sae_quality(saes[seed], heldout)
        quality[name] = {"fvu": round(q["fvu"], 4), "l0": round(q["l0"], 2),
                         "dead_fraction": round(q["dead_fraction"], 4),
                         "median_frequency": round(q["median_frequency"], 6)}
    return saes, quality


def _match_record(saes: dict, seeds: tuple[int, int], threshold: float) -> dict:
    import numpy as np
    import torch

    from faithcase.stages.match import match_features

    first, second = seeds
    matched = match_features(saes[first].W_dec, saes[second].W_dec, threshold=threshold)
    sims = np.asarray(matched.assignment.similarity)
    stats = matched.stats
    return {
        "threshold": threshold, "shared_ratio": round(stats.shared_ratio, 4),
        "top1_ratio": round(stats.top1_ratio, 4),
        "mean_similarity": round(stats.mean_similarity, 4), "n_matched": stats.n_matched,
        "pairs_cos_ge_0.9": int((sims >= 0.9).sum()), "n_dead": [stats.n_dead1, stats.n_dead2],
        "decoders_identical": bool(torch.equal(saes[first].W_dec, saes[second].W_dec)),
    }


def _build_seconds(ledger: dict, start: float) -> dict:
    """Seconds per stage (the others' from the ledger, this one's so far) and their total."""
    seconds = {name: entry["seconds"] for name, entry in ledger.items() if name != "manifest"}
    seconds["manifest"] = round(time.perf_counter() - start, 1)
    return seconds | {"total": round(sum(seconds.values()), 1)}


def _model_record(model_file: Path, hook: str) -> dict:
    return {"name": MODEL_NAME, "file": model_file.name, "sha256": sha256_file(model_file),
            "hook": hook}


def _corpus_record(corpus: dict, filters) -> dict:
    return {
        "files": {"train": TRAIN_FILE, "heldout": HELDOUT_FILE},
        "filters": asdict(filters),
        "filter_counts": corpus["filter_counts"],
        **{name: corpus[name] for name in CORPUS_COUNTS},
        "total_tokens": corpus["train_tokens"] + corpus["heldout_tokens"],
    }


def _sae_records(saes: dict, quality: dict, up: dict, seeds: tuple[int, int]) -> dict:
    return {sae_name(seed): {"folder": sae_name(seed), "format": "saelens", "seed": seed,
                             "d_in": saes[seed].d_in, "d_sae": saes[seed].d_sae,
                             "k": saes[seed].k, "heldout": quality[sae_name(seed)],
                             "training": up[sae_name(seed)]}
            for seed in seeds}


def targets(quality: dict, pairs_090: int) -> dict:
    """Whether the bundle meets its quality targets, per SAE and as a whole."""
    per_sae = {name: q["fvu"] <= TARGET_FVU and q["dead_fraction"] <= TARGET_DEAD
               for name, q in quality.items()}
    return {"fvu_max": TARGET_FVU, "dead_fraction_max": TARGET_DEAD,
            "pairs_cos_ge_0.9_min": TARGET_PAIRS_090, "met_per_sae": per_sae,
            "met": all(per_sae.values()) and pairs_090 >= TARGET_PAIRS_090}


def bundle_bytes(bundle_dir: Path) -> int:
    return sum(p.stat().st_size for p in bundle_dir.rglob("*")
               if p.is_file() and p.name != MANIFEST_FILE)


# ----------------------------------------------------------------------------- reading it back


def bundle_info(bundle_dir: str | Path | None = None) -> dict:
    """The bundle's manifest (FaithcaseError if the bundle has not been built)."""
    path = Path(bundle_dir or BUNDLE_DIR) / MANIFEST_FILE
    if not path.is_file():
        raise FaithcaseError(f"no demo bundle manifest at {path}; "
                             "build it with `faithcase demo build`")
    return json.loads(path.read_text())


def info_rows(info: dict) -> list[tuple[str, str]]:
    """The manifest as (field, value) rows for a two-column table; nested keys joined by dots."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                walk(f"{prefix}.{name}" if prefix else str(name), inner)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.4g}"))
        else:
            rows.append((prefix, json.dumps(value) if isinstance(value, list) else str(value)))

    walk("", info)
    return rows
