"""The checks every format loader shares, each failing with one FaithcaseError line: the folder
exists, the format's files are there, configs and weights read cleanly, the shapes agree."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from faithcase.run.errors import FaithcaseError
from faithcase.saes.model import SAE

MAX_MESSAGE = 300  # characters of a library's own error kept in ours

# dtype names as checkpoints declare them ("torch.bfloat16" in BatchTopK's config.json,
# "bfloat16" in SAELens' cfg.json); what is absent or not listed encodes in float32
DECLARED_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "double": torch.float64,
}


def existing_folder(path: str | Path) -> Path:
    """`path` as a folder that exists, else FaithcaseError (missing, or a file)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FaithcaseError(f"SAE folder not found: {folder}")
    if not folder.is_dir():
        raise FaithcaseError(
            f"SAE path is a file, not a folder: {folder}; give the folder that holds it"
        )
    return folder


def declared_dtype(value: Any) -> torch.dtype:
    """The floating dtype a checkpoint declares (a torch dtype or its name); float32 when
    absent or unknown."""
    if isinstance(value, torch.dtype):
        return value if value in DECLARED_DTYPES.values() else torch.float32
    name = str(value).strip().lower().removeprefix("torch.") if value is not None else ""
    return DECLARED_DTYPES.get(name, torch.float32)


def listing(folder: Path) -> str:
    """The names in `folder`, sorted and comma-separated ("nothing" when empty)."""
    return ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"


def has_files(folder: Path, names: Iterable[str]) -> bool:
    """Whether `folder` holds every file of `names` (and `names` is not empty)."""
    names = tuple(names)
    return bool(names) and all((folder / name).is_file() for name in names)


def require_files(folder: Path, fmt: str, names: tuple[str, ...]) -> None:
    """FaithcaseError naming the missing files unless `folder` holds all of `names`."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FaithcaseError(
            f"{folder} is not a {fmt} SAE folder: missing {', '.join(missing)}"
            f" ({fmt} expects {' + '.join(names)}); found: {listing(folder)}"
        )


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most MAX_MESSAGE characters (+ "...")."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


@contextmanager
def reading(what: str, path: Path) -> Iterator[None]:
    """Turn any failure while reading a checkpoint into one FaithcaseError line."""
    try:
        yield
    except FaithcaseError:
        raise
    except Exception as exc:
        raise FaithcaseError(
            f"cannot read {what} {path}: {type(exc).__name__}: {one_line(exc)}"
        ) from exc


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path` (an SAE config)."""
    with reading("SAE config", path):
        data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise FaithcaseError(f"SAE config {path} is not a JSON object")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, on the CPU."""
    from safetensors.torch import load_file

    with reading("SAE weights", path):
        return load_file(str(path), device="cpu")


def read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors saved with torch.save (loaded with weights_only=True)."""
    with reading("SAE weights", path):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FaithcaseError(f"SAE weights {path} are not a state dict of tensors")
    return state


def require_keys(weights: Mapping[str, Any], required: Iterable[str], what: str) -> None:
    """FaithcaseError "<what> lack <missing>; found: <keys>" unless `weights` has `required`."""
    missing = [key for key in required if key not in weights]
    if missing:
        raise FaithcaseError(
            f"{what} lack {', '.join(missing)}; found: {', '.join(sorted(weights))}"
        )


def check_shapes(sae: SAE, path: Path) -> SAE:
    """`sae`, once its biases, decoder, thresholds and k agree with W_enc [d_in, d_sae]."""
    d_in, d_sae = sae.W_enc.shape
    expected = {
        "b_enc": (sae.b_enc, (d_sae,)),
        "W_dec": (sae.W_dec, (d_sae, d_in)),
        "b_dec": (sae.b_dec, (d_in,)),
    }
    if sae.threshold is not None:
        expected["threshold"] = (sae.threshold, (d_sae,))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise FaithcaseError(
                f"SAE weights in {path} are inconsistent: {name} has shape {tuple(tensor.shape)},"
                f" expected {shape} for W_enc {(d_in, d_sae)}"
            )
    if sae.activation == "topk" and not (sae.k and 0 < sae.k <= d_sae):
        raise FaithcaseError(
            f"SAE in {path} has top-k k={sae.k}, which must be between 1 and d_sae={d_sae}"
        )
    return sae
