"""The window explainer's backends: where its replies come from. Each declares when it applies
(from the `describe` section), its name, what its replies depend on (the fingerprint) and how to
build it; the first that applies is used. A new backend is one entry in BACKENDS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backend:
    name: str
    applies: Callable[[Any], bool]  # describe section -> used?
    label: Callable[[Any, str], str]  # (section, the run's model name) -> what the report says
    key: Callable[[Any], dict]  # runtime -> what its replies depend on besides the prompt
    make: Callable[[Any], Any]  # runtime -> an object with `replies(chats, anchor, progress)`


def _http(rt):
    from faithcase.model.window_explainer import HttpExplainer

    cfg = rt.cfg.describe
    return HttpExplainer(cfg.url, cfg.model, cfg.max_new_tokens, cfg.timeout_s, cfg.concurrency,
                         cfg.api_key_env)


def _local(rt, model_section, name: str):
    from faithcase.model.lm import load_hf_model, load_tokenizer
    from faithcase.model.window_explainer import LocalExplainer
    from faithcase.run.paths import resolve_path

    cfg = rt.cfg.describe

    def local(spec):
        return str(resolve_path(spec, rt.base_dir())) if spec else None

    tokenizer = load_tokenizer(name, path=local(model_section.path),
                               gguf=local(model_section.gguf))
    hf_model = load_hf_model(name, path=local(model_section.path), gguf=local(model_section.gguf),
                             device=rt.device, dtype=model_section.dtype)
    return LocalExplainer(hf_model, tokenizer, name, cfg.max_new_tokens, cfg.batch_size,
                          cfg.prefill)


def _same(rt):
    from faithcase.model.window_explainer import LocalExplainer

    cfg = rt.cfg.describe
    plain = rt.lm.plain_model()
    if plain is None:
        return _local(rt, rt.cfg.model, rt.cfg.model.name)
    # the run's weights, without the bridge's hooks
    return LocalExplainer(plain, rt.lm.tokenizer, rt.lm.name, cfg.max_new_tokens, cfg.batch_size,
                          cfg.prefill)


BACKENDS = (
    Backend("http", lambda cfg: bool(cfg.url), lambda cfg, run: f"{cfg.model} at {cfg.url}",
            lambda rt: {"url": rt.cfg.describe.url, "model": rt.cfg.describe.model}, _http),
    Backend("same", lambda cfg: cfg.model == "same", lambda cfg, run: f"{run} (the run's model)",
            lambda rt: {"model": rt.resource_key("model"), "device": rt.device}, _same),
    Backend("local", lambda cfg: True, lambda cfg, run: cfg.gguf or cfg.path or cfg.model,
            lambda rt: {"model": rt.cfg.describe.model, "path": rt.cfg.describe.path,
                        "gguf": rt.cfg.describe.gguf, "dtype": rt.cfg.describe.dtype,
                        "device": rt.device},
            lambda rt: _local(rt, rt.cfg.describe, rt.cfg.describe.model)),
)


def backend(cfg) -> Backend:
    """The backend the describe section `cfg` selects."""
    return next(b for b in BACKENDS if b.applies(cfg))
