"""`faithcase rehearse`: every stage at the paper's shapes, on a reduced workload, timed.

It builds (once, seeded; see `rehearse_build.py`) a random-weight model with Llama-3.2-1B's
architecture, two BatchTopK SAEs of 14,336 × 2,048 (k=48) in FaithfulSAE's folder layout sharing
planted rows, and a small corpus; writes a config with the paper config's dtype (auto: the
checkpoints' bfloat16, float32 on a CPU without fast bf16) and batch sizes; then runs each stage
in its own process, recording its time, its model-loading time
and its peak RSS, and projects its full-size time on this machine from its per-unit cost: corpus
tokens for the passes (the paper's 2M), steered rows (sweep rows of the features and of the null,
and generated texts) for explain, scored features for embed; the other stages do the same work at
any workload. The planted pairs must come back as the best pairs. Before the stages it checks the
explain prompt on the Llama 3 tokenizer under the plain and the chat template (`check_prompts`).

`--gpu-check` (`make gpu-check`): on a GPU, the paper's workload on GPU_CHECK_TOKENS corpus tokens,
with each stage's peak GPU memory and corpus tokens/s; without one, the reduced workload on CPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from faithcase.run.errors import FaithcaseError

# as the paper config (pkg:faithcase/configs/llama-3.2-1b.yaml) sets them
PAPER_BATCHES = {"seq_len": 128, "corpus": 512, "explain": 128}
# workloads: corpus tokens of the passes, pairs per group, stratified pairs, scales,
# null directions, samples, windows the window explainer reads, and whether it describes every
# group (else the best pairs only)
FULL = {"tokens": 2_000_000, "n_pairs": 10, "n_stratified": 40, "n_scales": 16, "n_null": 64,
        "n_samples": 4, "n_windows": 20, "describe_all": True}
REDUCED = {"tokens": 4000, "n_pairs": 2, "n_stratified": 4, "n_scales": 4, "n_null": 8,
           "n_samples": 4, "n_windows": 4, "describe_all": False}
GPU_CHECK_TOKENS = 200_000  # times the corpus passes; projected to FULL's 2M
GPU_CHECK = FULL | {"tokens": GPU_CHECK_TOKENS}
PASSES = ("scan", "windows")  # the stages that read the corpus


def gpu_check_preset() -> tuple[dict, str, bool]:
    """(workload, device, on a GPU) of `--gpu-check`: the paper's workload on a GPU, the reduced
    one on CPU."""
    import torch

    if torch.cuda.is_available():
        return dict(GPU_CHECK), "cuda", True
    return dict(REDUCED), "cpu", False


def units(stage: str, workload: dict) -> float:
    """The work a stage does, in the unit its time scales with."""
    features = 2 * (3 * workload["n_pairs"] + workload["n_stratified"])
    if stage in PASSES:
        return workload["tokens"]
    if stage == "explain":  # sweep rows of the features and the null, and generated texts
        sweep_rows = (features + workload["n_null"]) * workload["n_scales"]
        return sweep_rows + features * (1 + workload["n_samples"])
    if stage == "embed":
        return features
    if stage == "describe":  # prompt tokens grow with the windows shown
        return (features if workload["describe_all"] else 2 * workload["n_pairs"]) \
            * workload["n_windows"]
    # match, pairs, assemble (its bootstrap runs over every matched pair) and report:
    # the same work at any workload
    return 1.0


def build(work_dir: Path, workload: dict, console, device: str = "cpu") -> tuple[Path, dict]:
    """The rehearsal's model, SAEs, corpus and config under work_dir (each reused when already
    built)."""
    from faithcase.tools.rehearse_build import (
        build_paper_model,
        build_paper_saes,
        build_rehearsal_corpus,
    )

    work_dir = work_dir.resolve()  # the config's paths must not depend on where it is read from
    work_dir.mkdir(parents=True, exist_ok=True)
    with console.status("building the random-weight Llama-3.2-1B-shaped model (once) …"):
        model = build_paper_model(work_dir / "model")
    with console.status("building two 14,336 × 2,048 BatchTopK SAEs with planted rows (once) …"):
        planted = build_paper_saes(work_dir / "saes", model_folder=model)
    corpus = build_rehearsal_corpus(work_dir / "corpus.jsonl", n_tokens=workload["tokens"])
    config = rehearsal_config(work_dir, model, planted, corpus, workload, device)
    path = work_dir / "rehearsal.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, planted


def rehearsal_config(work_dir: Path, model: Path, planted: dict, corpus: Path,
                     workload: dict, device: str = "cpu") -> dict:
    """The pipeline config of the rehearsal: the paper config's dtype, batch sizes and prompt."""
    from faithcase.artifacts import PAIR_KINDS
    from faithcase.tools.rehearse_build import PAPER_HOOK, REHEARSAL_MODEL_NAME

    saes = work_dir / "saes"
    return {
        "run_name": "rehearsal", "out_dir": str(work_dir / "run"), "device": device,
        "model": {"name": REHEARSAL_MODEL_NAME, "path": str(model), "dtype": "auto"},
        "hook": PAPER_HOOK,
        "sae1": {"path": str(saes / planted["sae1"]), "format": "batchtopk"},
        "sae2": {"path": str(saes / planted["sae2"]), "format": "batchtopk"},
        "corpus": {"source": str(corpus), "seq_len": PAPER_BATCHES["seq_len"],
                   "max_tokens": workload["tokens"], "batch_size": PAPER_BATCHES["corpus"]},
        "pairs": {"n_pairs": workload["n_pairs"], "n_stratified": workload["n_stratified"],
                  "strata": 4},
        "explain": {"n_scales": workload["n_scales"], "skip_lowest": 1,
                    "n_null": workload["n_null"], "n_samples": workload["n_samples"],
                    "batch_size": PAPER_BATCHES["explain"], "chat_template": "never"},
        "describe": {"n_windows": workload["n_windows"], "batch_size": 32,
                     "kinds": list(PAIR_KINDS) if workload["describe_all"] else ["best"]},
    }


def run_stage(config: Path, stage: str, force: bool) -> dict:
    """One stage in its own process: its seconds, its model-loading seconds and its peak RSS."""
    code = ("import json, sys; from faithcase.tools.rehearse import stage_in_process; "
            "print(json.dumps(stage_in_process(sys.argv[1], sys.argv[2], sys.argv[3] == '1')))")
    argv = [sys.executable, "-c", code, str(config), stage, "1" if force else "0"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.perf_counter()
    out, err = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        last = (err.strip().splitlines() or ["(no output)"])[-1]
        raise FaithcaseError(f"rehearsal stage {stage} failed: {last}")
    result = json.loads(out.strip().splitlines()[-1])
    return result | {"wall": wall}


def stage_in_process(config: str, stage: str, force: bool) -> dict:
    """Run `stage` (its upstream stages are up to date) and report what it cost this process:
    seconds, loading seconds, peak RSS and (on a GPU) peak GPU memory allocated."""
    import resource

    import torch

    from faithcase.config import load_config
    from faithcase.model.lm import resolve_device
    from faithcase.pipeline import open_run
    from faithcase.run.runtime import Runtime

    rt = Runtime(load_config(config))
    on_gpu = resolve_device(rt.cfg.device).startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    with open_run(rt, (stage,) if force else ()) as graph:
        start = time.perf_counter()
        value = graph.get(stage)
        seconds = time.perf_counter() - start
    extra = {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None}
    if stage == "pairs":
        extra["best"] = [[p.index1, p.index2] for p in value.pairs["best"]]
    return {"seconds": seconds, "load": sum(rt.load_seconds.values()),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, **extra}


def stage_row(stage: str, result: dict, workload: dict) -> dict:
    """A stage's timings, its corpus tokens/s (passes only) and its projected full-size time."""
    work = result["seconds"] - result["load"]
    factor = units(stage, FULL) / units(stage, workload)
    tokens_per_s = workload["tokens"] / work if stage in PASSES and work > 0 else None
    return {"stage": stage, "seconds": result["seconds"], "load": result["load"],
            "peak_rss_gib": result["peak_rss_gib"], "peak_gpu_gib": result.get("peak_gpu_gib"),
            "tokens_per_s": tokens_per_s, "projected": result["load"] + work * factor,
            "factor": factor, **{k: v for k, v in result.items() if k == "best"}}


def rehearse(work_dir: Path, workload: dict, console, device: str = "cpu") -> list[dict]:
    """Build, check the prompts, run every stage, check the planted pairs; returns one row per
    stage."""
    from faithcase.pipeline import STAGES

    config, planted = build(work_dir, workload, console, device)
    print_prompt(check_prompts(work_dir.resolve() / "model"), console)
    rows = []
    for stage in STAGES:
        if stage == "scan":  # the scan times the model's pass: no pass cached by an earlier one
            shutil.rmtree(work_dir.resolve() / "run" / ".cache", ignore_errors=True)
        with console.status(f"rehearsing {stage} …"):
            result = run_stage(config, stage, force=True)
        rows.append(stage_row(stage, result, workload))
        gpu = result.get("peak_gpu_gib")
        console.print(f"{stage}: {result['seconds']:.1f} s (loading {result['load']:.1f} s), "
                      f"peak RSS {result['peak_rss_gib']:.2f} GiB"
                      + (f", peak GPU {gpu:.2f} GiB" if gpu is not None else ""))
    best = next(r["best"] for r in rows if "best" in r)
    planted_pairs = {tuple(p) for p in planted["planted"]}
    found = {tuple(p) for p in best}
    if not found <= planted_pairs:
        raise FaithcaseError(f"the best pairs {sorted(found - planted_pairs)} are not planted "
                             "pairs: the matching or the pair selection is broken")
    return rows


# ---------------------------------------------------------------- the explain prompt

HEADER_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def check_prompts(model_folder: Path) -> dict:
    """The explain prompt (paper settings) on the rehearsal model's tokenizer, {mode: PromptSpec}
    for chat_template auto, never and always. Under the plain and the chat template each
    placeholder must be one token `X`, after one BOS; the base model's prompt (auto = never) must
    hold no header token and no date, the chat prompt its headers."""
    from faithcase.config import ExplainConfig
    from faithcase.model.lm import LanguageModel, load_tokenizer
    from faithcase.model.prompt import build_prompt
    from faithcase.tools.rehearse_build import REHEARSAL_MODEL_NAME

    tokenizer = load_tokenizer(REHEARSAL_MODEL_NAME, path=str(model_folder))
    # build_prompt reads only the tokenizer and the name
    model = LanguageModel(bridge=None, hf_model=None, tokenizer=tokenizer,
                          name=REHEARSAL_MODEL_NAME)
    prompts = {mode: build_prompt(model, ExplainConfig(chat_template=mode))
               for mode in ("auto", "never", "always")}
    for mode, prompt in prompts.items():
        found = [prompt.pieces[p] for p in prompt.positions]
        if found != [ExplainConfig().placeholder] * 2 or prompt.tokens.count(
                tokenizer.bos_token_id) != 1 or prompt.tokens[0] != tokenizer.bos_token_id:
            raise FaithcaseError(f"the {mode} explain prompt is off: placeholders {found} at "
                                 f"{prompt.positions}, tokens {list(prompt.pieces)}")
    headers = set(tokenizer.convert_tokens_to_ids(list(HEADER_TOKENS)))
    base, chat = prompts["auto"], prompts["always"]
    if base != prompts["never"] or headers & set(base.tokens) or "Date" in base.text:
        raise FaithcaseError(f"the base model's prompt is not the plain template: {base.text!r}")
    if not chat.chat or not headers <= set(chat.tokens) or "Today Date" not in chat.text:
        raise FaithcaseError(f"the chat prompt lacks the Llama 3 headers: {chat.text!r}")
    return prompts


def print_prompt(prompts: dict, console) -> None:
    """The base model's prompt, as text and token by token (placeholders marked)."""
    base = prompts["auto"]
    console.print(f"base-model explain prompt (chat_template auto = never), {len(base.tokens)} "
                  f"tokens, placeholders at {base.positions}:", markup=False)
    console.print(repr(base.text), markup=False)
    console.print(" ".join(f">{piece!r}<" if i in base.positions else repr(piece)
                           for i, piece in enumerate(base.pieces)), markup=False)
    console.print(f"chat template (always): {len(prompts['always'].tokens)} tokens, "
                  f"placeholders at {prompts['always'].positions}", markup=False)
