"""Remote-code embedders (config.json `auto_map`) under transformers 5.

Models that ship their own modeling code were written against transformers 4.x. The paper's
embedder, dunzhang/stella_en_400M_v5, runs the code of Alibaba-NLP/new-impl (`modeling.NewModel`),
and two changes in transformers 5 break it, one loudly and one silently:

1. `PreTrainedModel` no longer has 4.x's `ModuleUtilsMixin` mask helpers
   (`get_extended_attention_mask`, `invert_attention_mask`, `get_head_mask`). `NewModel.forward`
   calls `get_extended_attention_mask(attention_mask, input_shape)` on its non-xformers path (the
   one faithcase takes on CPU), so encoding raises AttributeError. `install_mask_helpers` adds
   equivalents of the 4.x helpers to the loaded model's class, only those the class lacks.
2. transformers 5 builds a model on the meta device and then loads the checkpoint into it. Buffers
   registered with `persistent=False` are not in the checkpoint: they are re-created empty
   (`torch.empty_like`, i.e. whatever memory held) and only native models recompute them, in their
   `_init_weights`. new-impl's `NewEmbeddings` computes `position_ids` (an arange) and its rotary
   module `inv_freq`, `cos_cached` and `sin_cached` (NTK-scaled for stella) in `__init__`, so they
   hold garbage and the embeddings come out wrong without any error.
   `restore_non_persistent_buffers` builds a second instance of the model's class from its config,
   for real on the CPU (with its parameters on the meta device, so no weight memory), lets every
   module's own `__init__` compute its buffers, and copies each non-persistent buffer into the
   loaded model (on the loaded buffer's device, in its dtype). Nothing names stella's buffers.

The code's revision is pinned: stella's auto_map names another repo (`Alibaba-NLP/new-impl--...`),
whose code transformers takes from that repo's main branch unless told a revision.
`code_revision(auto_map)` returns the commit pinned in `PINNED_CODE_REVISIONS` when the auto_map
names exactly one other repo and that repo is pinned. `load_embedder` then passes it as
`code_revision` in config_kwargs (AutoConfig honours it) and calls `use_pinned_code`, which imports
the AutoModel class at that commit and registers it with transformers' AutoModel for the pinned
config class: sentence-transformers 6 keeps a `code_revision` in model_kwargs for its own module
classes, so AutoModel would otherwise fetch the model code from main. Offline, that commit's
snapshot must be in the Hugging Face cache
(`hf download Alibaba-NLP/new-impl --revision <commit>` once online).

`make_compatible(module)` applies both fixes to every remote-code model (a class transformers
imported into `transformers_modules`) inside a sentence-transformers model and returns what it did.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# the new-impl commit that other projects pin for gte-*-v1.5 models (not checked against the hub
# from here: update it when a newer commit is known to suit stella)
NEW_IMPL_REVISION = "40ced75c3017eb27626c9d4ea981bde21a2662f4"
PINNED_CODE_REVISIONS = {"Alibaba-NLP/new-impl": NEW_IMPL_REVISION}
DYNAMIC_MODULES = "transformers_modules"  # where transformers imports remote code


# ------------------------------------------------------------------------------- code revision

def code_repos(auto_map: Mapping[str, Any]) -> set[str]:
    """The other hub repos an auto_map takes code from (`repo--module.Class` references)."""
    repos = set()
    for reference in auto_map.values():
        for item in reference if isinstance(reference, list) else [reference]:
            if isinstance(item, str) and "--" in item:
                repos.add(item.split("--")[0])
    return repos


def code_revision(auto_map: Mapping[str, Any]) -> str | None:
    """The pinned commit of the one other repo the auto_map's code comes from, else None."""
    repos = code_repos(auto_map)
    if len(repos) != 1:
        return None
    return PINNED_CODE_REVISIONS.get(repos.pop())


def _reference(auto_map: Mapping[str, Any], auto_class: str) -> str | None:
    reference = auto_map.get(auto_class)
    reference = reference[0] if isinstance(reference, list) and reference else reference
    return reference if isinstance(reference, str) else None


def use_pinned_code(target: str, auto_map: Mapping[str, Any], revision: str,
                    local_files_only: bool = False) -> bool:
    """Import the auto_map's AutoConfig and AutoModel classes at `revision` and register the pair
    with AutoModel, so that loading `target` builds the model from the pinned code. Only for
    trusted code. False when the auto_map lacks either class."""
    from transformers import AutoModel
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    config_ref, model_ref = _reference(auto_map, "AutoConfig"), _reference(auto_map, "AutoModel")
    if config_ref is None or model_ref is None:
        return False
    config_class, model_class = (
        get_class_from_dynamic_module(reference, target, code_revision=revision,
                                      local_files_only=local_files_only)
        for reference in (config_ref, model_ref))
    AutoModel.register(config_class, model_class, exist_ok=True)
    return True


# -------------------------------------------------------------------------------- mask helpers

def _model_dtype(model: nn.Module) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.get_default_dtype()


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1 = attend, 0 = masked, as an additive bias: 0 and the dtype's lowest value."""
    mask = mask.to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def get_extended_attention_mask(self: nn.Module, attention_mask: torch.Tensor,
                                input_shape: tuple[int, ...] | torch.Size | None = None,
                                device: torch.device | None = None,
                                dtype: torch.dtype | None = None) -> torch.Tensor:
    """transformers 4.x's helper: a [batch, seq] or [batch, from, to] mask as an additive bias
    broadcastable to [batch, heads, from, to]; causal on top for a decoder config."""
    dtype = dtype or _model_dtype(self)
    if attention_mask.dim() == 3:
        extended = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        extended = attention_mask[:, None, None, :]
        if getattr(getattr(self, "config", None), "is_decoder", False):
            queries = input_shape[1] if input_shape is not None else attention_mask.shape[1]
            keys = attention_mask.shape[1]
            causal = torch.ones(queries, keys, device=attention_mask.device).tril(keys - queries)
            extended = causal[None, None, :, :] * extended
    else:
        raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)}: "
                         f"expected [batch, seq] or [batch, from_seq, to_seq]")
    return _additive(extended, dtype)


def invert_attention_mask(self: nn.Module, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """transformers 4.x's helper: an encoder mask as an additive bias over [batch, 1, *, seq]."""
    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    else:
        extended = encoder_attention_mask[:, None, None, :]
    return _additive(extended, _model_dtype(self))


def get_head_mask(self: nn.Module, head_mask: torch.Tensor | None, num_hidden_layers: int,
                  is_attention_chunked: bool = False) -> torch.Tensor | list[None]:
    """transformers 4.x's helper: None per layer, or the head mask as
    [layers, batch, heads, seq, seq]-broadcastable."""
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    head_mask = head_mask.to(_model_dtype(self))
    return head_mask.unsqueeze(-1) if is_attention_chunked else head_mask


MASK_HELPERS = {
    "get_extended_attention_mask": get_extended_attention_mask,
    "invert_attention_mask": invert_attention_mask,
    "get_head_mask": get_head_mask,
}


def install_mask_helpers(model: nn.Module) -> list[str]:
    """Add the 4.x mask helpers the model's class lacks; never replaces an existing attribute.
    Returns the names installed by this call."""
    cls = type(model)
    installed = []
    for name, helper in MASK_HELPERS.items():
        if not hasattr(cls, name):
            setattr(cls, name, helper)
            installed.append(name)
    return installed


def provided_helpers(model: nn.Module) -> list[str]:
    """The mask helpers the model's class has from this module (installed now or earlier)."""
    return [name for name, helper in MASK_HELPERS.items()
            if getattr(type(model), name, None) is helper]


# ---------------------------------------------------------------------- non-persistent buffers

def named_non_persistent_buffers(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(qualified name, owning module, buffer name) of every non-persistent buffer."""
    for prefix, module in model.named_modules():
        for name in sorted(module._non_persistent_buffers_set):
            if module._buffers.get(name) is not None:
                yield (f"{prefix}.{name}" if prefix else name), module, name


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Parameters registered inside go to the meta device; buffers stay where they are made."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"),
                                                    requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """The default dtype transformers builds a model under (the dtype it loads it in)."""
    previous = torch.get_default_dtype()
    if dtype.is_floating_point:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _fresh_instance(model: nn.Module) -> nn.Module:
    """A new instance of the model's class from a copy of its config, built on the CPU."""
    config = copy.deepcopy(model.config)
    with torch.device("cpu"), _default_dtype(_model_dtype(model)):
        try:
            with _parameters_on_meta():
                return type(model)(config)
        except Exception:  # noqa: BLE001 - an __init__ that reads its parameters: build it whole
            return type(model)(config)


@dataclass
class BufferRepair:
    restored: list[str] = field(default_factory=list)  # copied from a fresh instance
    changed: list[str] = field(default_factory=list)  # of those, the ones that were wrong
    unmatched: list[str] = field(default_factory=list)  # no counterpart in a fresh instance


def restore_non_persistent_buffers(model: nn.Module) -> BufferRepair:
    """Recompute the model's non-persistent buffers by its own `__init__` logic (see the module
    docstring) and copy them in."""
    repair = BufferRepair()
    loaded = list(named_non_persistent_buffers(model))
    if not loaded:
        return repair
    fresh = {name: module._buffers[leaf]
             for name, module, leaf in named_non_persistent_buffers(_fresh_instance(model))}
    fallback_device = next((p.device for p in model.parameters() if p.device.type != "meta"),
                           torch.device("cpu"))
    for name, module, leaf in loaded:
        buffer, new = module._buffers[leaf], fresh.get(name)
        if new is None:
            repair.unmatched.append(name)
            continue
        device = fallback_device if buffer.device.type == "meta" else buffer.device
        new = new.to(device=device, dtype=buffer.dtype)
        if (buffer.device.type == "meta" or buffer.shape != new.shape
                or not torch.equal(buffer, new)):
            repair.changed.append(name)
        module._buffers[leaf] = new
        repair.restored.append(name)
    return repair


# ----------------------------------------------------------------------------------- together

def is_remote_code_model(module: nn.Module) -> bool:
    return type(module).__module__.startswith(DYNAMIC_MODULES + ".") and hasattr(module, "config")


@dataclass
class RemoteCodeReport:
    """What `make_compatible` did to the remote-code models of one embedder."""

    models: list[str] = field(default_factory=list)  # their class names
    helpers: list[str] = field(default_factory=list)  # mask helpers the layer provides them
    buffers: list[str] = field(default_factory=list)  # non-persistent buffers recomputed
    changed: list[str] = field(default_factory=list)  # of those, the ones that were wrong
    unmatched: list[str] = field(default_factory=list)  # buffers it could not recompute

    @property
    def summary(self) -> str:
        """One line, e.g. for a `faithcase check` table."""
        parts = [f"remote code {', '.join(self.models)}"]
        if self.helpers:
            parts.append(f"added {', '.join(self.helpers)}")
        if self.buffers:
            parts.append(f"recomputed {len(self.buffers)} buffers ({len(self.changed)} were wrong)")
        if self.unmatched:
            parts.append(f"could not recompute {', '.join(self.unmatched)}")
        return "; ".join(parts)


def make_compatible(root: nn.Module) -> RemoteCodeReport | None:
    """Both fixes on every outermost remote-code model inside `root` (e.g. a SentenceTransformer);
    None when there is none, leaving plain models untouched."""
    report = RemoteCodeReport()
    covered: set[int] = set()
    for module in root.modules():
        if id(module) in covered or not is_remote_code_model(module):
            continue
        covered.update(id(sub) for sub in module.modules())
        install_mask_helpers(module)
        repair = restore_non_persistent_buffers(module)
        report.models.append(type(module).__name__)
        report.helpers.extend(h for h in provided_helpers(module) if h not in report.helpers)
        report.buffers.extend(repair.restored)  # names within the model
        report.changed.extend(repair.changed)
        report.unmatched.extend(repair.unmatched)
    return report if report.models else None
