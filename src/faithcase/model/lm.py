"""The language model: loading (HF id, local folder, GGUF file), hook names, activations, steering.

Every model is wrapped by TransformerLens' TransformerBridge, which swaps the HF model's
submodules for hooked components in place. So `hf_model(...)` runs through the same hook points
as `bridge(...)`: hooks added with `bridge.hooks(...)` also act on HF forwards with a KV cache
(the steered, cached passes of `stages/steering.py`).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from faithcase.model import hooks
from faithcase.model.hooks import SteerMode
from faithcase.run.errors import FaithcaseError
from faithcase.run.machine import DTYPES, DtypeChoice, choose_dtype, resolve_dtype  # noqa: F401
from faithcase.run.paths import resolve_path




def instruction_tuned_name(name: str) -> bool:
    """Whether a model's name marks it instruction-tuned: one of its words (split at / - _ . and
    spaces) starts with `instruct` or is `chat` or `it` (SmolLM2-135M-Instruct, Llama-2-7b-chat-hf,
    gemma-2-2b-it); meta-llama/Llama-3.2-1B is a base model."""
    words = re.split(r"[/\-_.\s]+", name.lower())
    return any(word.startswith("instruct") or word in ("chat", "it") for word in words)


# ---------------------------------------------------------------- loading

def resolve_device(device: str) -> str:
    """`auto` → cuda when available, else cpu; anything else is passed through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_source(name: str, path: str | None = None, gguf: str | None = None) -> tuple[str, dict]:
    """(from_pretrained source, extra kwargs) for a GGUF file, a local folder or an HF id.

    Local sources are read with local_files_only=True: they never touch the network.
    """
    if gguf and path:
        raise FaithcaseError("Give the model either as a GGUF file or as a local folder, not both.")
    if gguf:
        from faithcase.model.gguf_cache import dequantized_folder

        file = resolve_path(gguf)
        if not file.is_file():
            raise FaithcaseError(f"GGUF model file not found: {file}")
        folder = dequantized_folder(file)  # dequantized once (model/gguf_cache.py)
        if folder is not None:
            return str(folder), {"local_files_only": True}
        return str(file.parent), {"gguf_file": file.name, "local_files_only": True}
    if path:
        folder = resolve_path(path)
        if not (folder / "config.json").is_file():
            raise FaithcaseError(f"No Hugging Face model folder (with config.json) at {folder}")
        return str(folder), {"local_files_only": True}
    return name, {}


def load_tokenizer(name: str, path: str | None = None, gguf: str | None = None):
    """The tokenizer alone (much faster than the model for a GGUF file); it always has a pad
    token."""
    from transformers import AutoTokenizer

    source, kwargs = model_source(name, path, gguf)
    with _as_faithcase_error(source):
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # needed to pad prompt batches
    return tokenizer


def declared_model_dtype(name: str, path: str | None = None, gguf: str | None = None):
    """The dtype a checkpoint declares (config.json `dtype`/`torch_dtype`); a GGUF file is
    dequantized, so float32."""
    if gguf:
        return torch.float32
    from transformers import AutoConfig

    source, kwargs = model_source(name, path, gguf)
    with _as_faithcase_error(source):
        config = AutoConfig.from_pretrained(source, **kwargs)
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = DTYPES.get(declared.removeprefix("torch."))
    return declared if isinstance(declared, torch.dtype) else torch.float32


def model_dtype(name: str, path: str | None = None, gguf: str | None = None,
                device: str = "auto", dtype: str = "auto") -> DtypeChoice:
    """The dtype the model computes in: `dtype` when set, else (auto) its declared dtype,
    except half precision on a CPU without fast half matmul (run/machine.py)."""
    if dtype != "auto":
        return DtypeChoice(resolve_dtype(dtype), resolve_dtype(dtype))
    return choose_dtype(declared_model_dtype(name, path, gguf), resolve_device(device))


def load_hf_model(name: str, path: str | None = None, gguf: str | None = None,
                  device: str = "auto", dtype: str | torch.dtype = "auto"):
    """The plain HF causal LM, on `device`, in eval mode, with gradients off; `dtype` auto: see
    `model_dtype`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI shows its own progress
    torch_dtype = (dtype if isinstance(dtype, torch.dtype)
                   else model_dtype(name, path, gguf, device, dtype).used)
    source, kwargs = model_source(name, path, gguf)
    with _as_faithcase_error(source):
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    hf_model.to(resolve_device(device))
    hf_model.eval()
    hf_model.requires_grad_(False)
    return hf_model


@contextmanager
def _as_faithcase_error(source: str):
    """Loading errors (unknown id, offline, missing files) become one-line FaithcaseErrors."""
    try:
        yield
    except OSError as err:
        text = str(err).strip()
        raise FaithcaseError(f"Could not load model '{source}': "
                             f"{text.splitlines()[0] if text else type(err).__name__}") from err


def wrap_model(name: str, hf_model, tokenizer) -> "LanguageModel":
    """Wrap a loaded HF model with TransformerBridge. `name` is the architecture's HF id
    (or any label): with hf_model given, the bridge takes the config from the model and
    fetches nothing; the name is only recorded."""
    from transformer_lens.model_bridge import TransformerBridge

    device = str(next(hf_model.parameters()).device)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=hf_model.dtype)
    bridge.eval()
    hf_model.requires_grad_(False)  # the bridge adds parameters (e.g. an unembed bias)
    _pass_kv_cache_to_attention(bridge)
    return LanguageModel(bridge=bridge, hf_model=hf_model, tokenizer=tokenizer, name=name)


def load_model(name: str, path: str | None = None, gguf: str | None = None,
               device: str = "auto", dtype: str | torch.dtype = "auto") -> "LanguageModel":
    """Load a model from a GGUF file (`gguf`), a local HF folder (`path`) or an HF id (`name`)."""
    tokenizer = load_tokenizer(name, path=path, gguf=gguf)
    hf_model = load_hf_model(name, path=path, gguf=gguf, device=device, dtype=dtype)
    return wrap_model(name, hf_model, tokenizer)


def cache_keyword(hf_model) -> str:
    """The decoder's keyword for a KV cache: `cache` in transformers 5, `past_key_values`
    before."""
    import inspect

    parameters = inspect.signature(hf_model.model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _unhooked(hf_model, device):
    """A plain instance of hf_model's architecture holding the same weight tensors, or None (an
    architecture whose buffers cannot be rebuilt from its config)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(hf_model.config)
    weights = {k.replace("._original_component", ""): v for k, v in hf_model.state_dict().items()}
    if any(k not in weights for k in plain.state_dict()):
        return None
    plain.load_state_dict({k: weights[k] for k in plain.state_dict()}, assign=True)
    rotary = getattr(plain.model, "rotary_emb", None)
    if rotary is not None:  # its buffers come from the config, not the weights
        plain.model.rotary_emb = type(rotary)(config=plain.config).to(device)
    plain.tie_weights()
    if any(t.is_meta for t in [*plain.parameters(), *plain.buffers()]):
        return None
    return plain.eval().requires_grad_(False)


def _pass_kv_cache_to_attention(bridge) -> None:
    """Work around a bridge/transformers mismatch that breaks KV-cached generation.

    transformers 5.x decoder layers hand the KV cache to attention as `cache=`, while the
    bridge's reimplemented attention (transformer-lens 3.9) only reads `past_key_values=`:
    the cache stays empty, each cached step attends to itself alone and greedy output turns
    into noise after the first token. A pre-hook copies the cache under the old name.
    """
    def alias_cache(module, args, kwargs):
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            return args, {**kwargs, "past_key_values": kwargs["cache"]}
        return None

    for block in getattr(bridge, "blocks", []):
        attention = getattr(block, "attn", None)
        if attention is not None:
            attention.register_forward_pre_hook(alias_cache, with_kwargs=True)


# ---------------------------------------------------------------- hooks

class _Captured(Exception):
    """Raised by a hook to end a forward pass early, carrying the activation."""

    def __init__(self, tensor: torch.Tensor):
        super().__init__("activation captured")
        self.tensor = tensor


# ---------------------------------------------------------------- the model

@dataclass(eq=False, repr=False)
class LanguageModel:
    """A TransformerBridge-wrapped causal LM with its tokenizer; all passes run without grad."""

    bridge: object
    hf_model: object
    tokenizer: object
    name: str
    _plain: object = None

    def __repr__(self) -> str:
        return (f"LanguageModel({self.name!r}, {self.n_layers} layers, d_model {self.d_model}, "
                f"{self.device})")

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def bos_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def plain_model(self):
        """The HF model without the bridge's hooks, sharing this model's weights (no copy), for
        passes no hook acts on (several times faster on CPU); None when it cannot be rebuilt."""
        if self._plain is None:
            self._plain = _unhooked(self.hf_model, self.device) or False
        return self._plain or None

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    # -- hook names

    def hook_layer(self, hook_name: str) -> int:
        """Layer index L of a hook name `blocks.{L}.…`, checked against the model's depth."""
        layer = hooks.hook_layer(hook_name)
        if layer >= self.n_layers:
            raise FaithcaseError(f"Hook '{hook_name}': layer {layer} out of range, "
                                 f"{self.name} has layers 0..{self.n_layers - 1}.")
        return layer

    def check_hook(self, hook_name: str) -> None:
        """The bridge silently ignores unknown hook names, so check them here."""
        if hook_name not in self.bridge.hook_dict:
            self.hook_layer(hook_name)  # clearer message for a bad layer
            raise FaithcaseError(f"Unknown hook '{hook_name}' for {self.name}; "
                                 f"use e.g. blocks.{{L}}.hook_resid_pre, "
                                 f"blocks.{{L}}.hook_resid_post or blocks.{{L}}.hook_mlp_out.")

    # -- tokens

    def _forward_kwargs(self, attention_mask: torch.Tensor | None) -> dict:
        kwargs = {"use_cache": False}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(self.device)
        return kwargs

    # -- forward passes

    @torch.no_grad()
    def activations(self, tokens: torch.Tensor, hook_name: str,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Activation [B, T, d] at hook_name; the pass stops as soon as the hook fires,
        so no later layer (nor the unembedding) runs."""
        self.check_hook(hook_name)

        def capture_and_stop(tensor, hook):
            raise _Captured(tensor)

        with self.bridge.hooks(fwd_hooks=[(hook_name, capture_and_stop)]):
            try:
                self.bridge(tokens.to(self.device), **self._forward_kwargs(attention_mask))
            except _Captured as captured:
                return captured.tensor.detach()
        raise RuntimeError(f"Hook {hook_name} did not fire during the forward pass")

    @torch.no_grad()
    def full_logits(self, tokens: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Plain full forward through the bridge: logits [B, T, vocab]."""
        return self.bridge(tokens.to(self.device), **self._forward_kwargs(attention_mask))

    @torch.no_grad()
    def run_with_steering(self, tokens: torch.Tensor, layer: int, positions_mask: torch.Tensor,
                          vectors: torch.Tensor, mode: SteerMode = "replace",
                          read_hooks: list[str] | tuple[str, ...] = (),
                          attention_mask: torch.Tensor | None = None,
                          last_position_only: bool = False,
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward with the residual steered at `blocks.{layer}.hook_resid_pre`.

        Returns (logits, {hook: activation}) for read_hooks. Logits are [B, T, V], or [B, V]
        for the last position only when last_position_only (the unembedding then runs on
        one position, which is much cheaper). With left-padded batches pass attention_mask.
        """
        cache: dict[str, torch.Tensor] = {}
        for name in read_hooks:
            self.check_hook(name)

        def reader(name):
            def read(tensor, hook):
                cache[name] = tensor.detach()
                return tensor
            return read

        self.check_layer(layer)
        fwd_hooks = [hooks.steered_at(layer, positions_mask, vectors, mode)]
        fwd_hooks += [(name, reader(name)) for name in read_hooks]
        kwargs = self._forward_kwargs(attention_mask)
        if last_position_only:
            kwargs["logits_to_keep"] = 1
        with self.bridge.hooks(fwd_hooks=fwd_hooks):
            logits = self.bridge(tokens.to(self.device), **kwargs)
        return (logits[:, -1] if last_position_only else logits), cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (float32) of final hidden states [..., d], as one 2-D matmul: with a 3-D input
        and the bias the bridge gives the unembedding, bfloat16 matmul on CPU copies the whole
        unembedding per row."""
        head = self.hf_model.get_output_embeddings()
        head = getattr(head, "original_component", head)
        flat = hidden.reshape(-1, hidden.shape[-1])
        logits = torch.nn.functional.linear(flat, head.weight, head.bias).float()
        return logits.reshape(*hidden.shape[:-1], -1)

    @torch.no_grad()
    def decoder_pass(self, input_ids: torch.Tensor, cache=None,
                     plain: bool = False) -> tuple[torch.Tensor, object]:
        """(final hidden states [B, T, d], the updated KV cache) of a KV-cached pass through the
        decoder; bridge hooks act on it as on any forward, unless `plain` (no hook, faster: the
        same weights without the bridge, `plain_model`)."""
        decoder = ((plain and self.plain_model()) or self.hf_model).model
        extra = {} if cache is None else {self.cache_keyword: cache}
        out = decoder(input_ids=input_ids.to(self.device), use_cache=True, **extra)
        updated = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        return out.last_hidden_state, updated

    @property
    def cache_keyword(self) -> str:
        return cache_keyword(self.hf_model)

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise FaithcaseError(f"Layer {layer} out of range; {self.name} has layers "
                                 f"0..{self.n_layers - 1}.")
