"""The run configuration: pydantic models loaded from YAML, with command-line overrides. The
sections (and `setting`, `affecting`) are in `config_sections.py`, re-exported here; every field
carries a description, which `faithcase config`, docs/configuration.md and errors show."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from faithcase.config_sections import (  # noqa: F401 - the sections are imported from here
    AFFECTS,
    BARE_TEMPLATE,
    QUERY_PLACEHOLDER,
    QUERY_TEMPLATES,
    RETRIEVAL_INSTRUCTION,
    AssembleConfig,
    CalibrationConfig,
    CorpusConfig,
    DescribeConfig,
    EmbedConfig,
    ExplainConfig,
    MatchConfig,
    MatrixConfig,
    ModelConfig,
    OutlierConfig,
    PairsConfig,
    SAEConfig,
    ScanConfig,
    Section,
    WindowsConfig,
    affecting,
    default_query_template,
    setting,
)
from faithcase.model.hooks import hook_layer
from faithcase.run.errors import FaithcaseError

DEMO_CONFIG = "pkg:faithcase/configs/demo.yaml"


RUN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class Config(Section):
    """A run: the language model and hook, the two SAEs (or many), the corpus, and one section
    per stage."""

    run_name: str = setting("demo", "nothing", description=(
        "A plain name: the run folder is `outputs/<run_name>` (or --out-dir); neither changes "
        "results."))
    out_dir: str | None = setting(None, "nothing", description=(
        "The run folder (also --out-dir), relative to the config file; null: "
        "`outputs/<run_name>`."))
    device: str = Field("auto", description=(
        "Where every component runs: auto (CUDA when present, else CPU), cpu, cuda, cuda:1 …"))
    model: ModelConfig = Field(ModelConfig(), description="The language model (section model).")
    hook: str = Field("blocks.12.hook_resid_pre", description=(
        "The SAEs' site, a TransformerLens hook name with its layer, e.g. "
        "blocks.12.hook_resid_pre (= HF hidden_states[12])."))
    sae1: SAEConfig | None = Field(None, description=(
        "The case study's first SAE: an SAE section, or the name of a `saes` entry."))
    sae2: SAEConfig | None = Field(None, description=(
        "The case study's second SAE: an SAE section, or the name of a `saes` entry."))
    saes: dict[str, SAEConfig] | None = Field(None, description=(
        "Many SAEs by name, for `faithcase matrix` and `studies`; exactly two are the pair."))
    studies: list[tuple[str, str]] = Field([], description=(
        "Pairs of `saes` names: a case study each (`faithcase run`)."))
    corpus: CorpusConfig = Field(description="The corpus of the pass (section corpus).")
    outliers: OutlierConfig = Field(OutlierConfig(), description=(
        "Positions never counted as activations (section outliers)."))
    scan: ScanConfig = Field(ScanConfig(), description=(
        "The load check of the corpus pass (section scan)."))
    match: MatchConfig = Field(MatchConfig(), description=(
        "The decoder matching (section match)."))
    pairs: PairsConfig = Field(PairsConfig(), description=(
        "Which matched pairs are followed (section pairs)."))
    explain: ExplainConfig = Field(ExplainConfig(), description=(
        "Self-explanation by steering (section explain)."))
    windows: WindowsConfig = Field(WindowsConfig(), description=(
        "Top windows and scoring contexts (section windows)."))
    embed: EmbedConfig = Field(EmbedConfig(), description=(
        "The embedding score (section embed)."))
    describe: DescribeConfig = Field(DescribeConfig(), description=(
        "The window explainer (section describe)."))
    matrix: MatrixConfig = Field(MatrixConfig(), description=(
        "`faithcase matrix` over the `saes` (section matrix)."))
    assemble: AssembleConfig = Field(AssembleConfig(), description=(
        "The case study's statistics (section assemble)."))
    calibration: CalibrationConfig = Field(CalibrationConfig(), description=(
        "Features of known meaning run through the same chain (section calibration)."))
    plugins: list[str] = Field([], description=(
        "Modules (importable names, or .py files relative to the config) that add an explainer "
        "(`EXPLAINER`) or a score (`SCORE`); also FAITHCASE_PLUGINS, comma-separated."))
    base_dir: str = Field(".", exclude=True, description=(
        "Set by faithcase: the folder the YAML's relative paths start from."))

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


def _nested_section(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model a field's type holds (alone, optional, or as the values of a dict), and
    whether a dict key comes before it in an error's location."""
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
        if get_origin(arg) is dict:
            return get_args(arg)[1], True
    return None, False


def field_at(loc: tuple) -> tuple[type[BaseModel], str | None, type[BaseModel] | None]:
    """(model, field, section inside it) of the deepest field an error location names: list
    indexes and union members are passed over; (Config, None, Config) for the top level."""
    owner, name, inner, dict_key = Config, None, Config, False
    for part in loc:
        if dict_key:
            dict_key = False
        elif inner is not None and part in inner.model_fields:
            owner, name = inner, str(part)
            inner, dict_key = _nested_section(inner.model_fields[part].annotation)
    return owner, name, inner


def config_keys(section: type[BaseModel]) -> list[str]:
    """The keys a YAML section may hold (internal fields such as base_dir left out)."""
    return [name for name, info in section.model_fields.items() if not info.exclude]


def _unknown_key(loc: tuple) -> str:
    where = ".".join(str(p) for p in loc)
    section = field_at(loc[:-1])[2]
    if section is None:
        return f"unknown config key {where!r}"
    keys = config_keys(section)
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    hint = f": did you mean {close[0]!r}?" if close else ""
    label = ".".join(str(p) for p in loc[:-1]) or "top-level"
    return f"unknown config key {where!r}{hint} ({label} keys: {', '.join(keys)})"


def _format_validation_error(err: ValidationError) -> str:
    """One line: where, what is wrong, and the field's description (an unknown key: the
    section's keys)."""
    first = err.errors()[0]
    if first["type"] == "extra_forbidden":
        return _unknown_key(tuple(first["loc"]))
    where = ".".join(str(p) for p in first["loc"]) or "config"
    message = f"config key {where!r}: {first['msg'].removeprefix('Value error, ')}"
    owner, name, _ = field_at(tuple(first["loc"]))
    description = owner.model_fields[name].description if name else None
    return f"{message} ({name}: {description.rstrip('.')})" if description else message


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
