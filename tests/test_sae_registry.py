"""The SAE format registry: a new format is one new module in faithcase.saes.formats."""

import importlib
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import faithcase.saes as saes
import faithcase.saes.formats as formats_package
from faithcase.config import parse_config
from faithcase.run.errors import FaithcaseError
from faithcase.run.runtime import Runtime
from faithcase.saes import detect_format, format_names, get_format, load_sae, registry
from sae_writers import write_batchtopk

BUILTIN = ("saelens", "sparsify", "batchtopk")
D_IN, D_SAE = 12, 40
TOY_MODULE = "toyformat"

# The whole format: identifying files, a loader, and the declaration at the end.
TOY_SOURCE = '''"""A toy SAE format: toy.json + toy.safetensors, ReLU(x @ W_enc + b_enc)."""

from pathlib import Path

from faithcase.saes.helpers import check_shapes, read_json, read_safetensors, require_keys
from faithcase.saes.model import SAE
from faithcase.saes.registry import SAEFormat


def load(folder: Path, hook: str | None = None) -> SAE:
    cfg = read_json(folder / "toy.json")
    weights = read_safetensors(folder / "toy.safetensors")
    require_keys(weights, ("W_enc", "b_enc", "W_dec", "b_dec"), f"toy weights in {folder}")
    sae = SAE(
        W_enc=weights["W_enc"],
        b_enc=weights["b_enc"],
        W_dec=weights["W_dec"],
        b_dec=weights["b_dec"],
        activation="relu",
        apply_b_dec_to_input=False,
        hook_name=cfg.get("hook"),
        hook_layer=cfg.get("layer"),
        format="toy",
        path=str(folder),
    )
    return check_shapes(sae, folder)


FORMAT = SAEFormat(
    name="toy",
    title="Toy",
    files=("toy.json", "toy.safetensors"),
    aliases=("toy-sae",),
    load=load,
)
'''


@pytest.fixture
def toy_format(tmp_path, monkeypatch):
    """The toy format's one module, visible in faithcase.saes.formats for this test only."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{TOY_MODULE}.py").write_text(TOY_SOURCE)
    module_name = f"{formats_package.__name__}.{TOY_MODULE}"
    monkeypatch.setattr(formats_package, "__path__", [*formats_package.__path__, str(plugins)])
    monkeypatch.setattr(registry, "_CACHE", None)
    importlib.invalidate_caches()
    yield plugins
    sys.modules.pop(module_name, None)
    if hasattr(formats_package, TOY_MODULE):
        delattr(formats_package, TOY_MODULE)


def write_toy(folder, seed=0):
    """A toy SAE folder; returns its weights as float64 numpy arrays."""
    rng = np.random.default_rng(seed)
    weights = {
        "W_enc": rng.normal(size=(D_IN, D_SAE)) / D_IN**0.5,
        "b_enc": rng.normal(size=D_SAE) * 0.3,
        "W_dec": rng.normal(size=(D_SAE, D_IN)),
        "b_dec": rng.normal(size=D_IN),
    }
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: torch.from_numpy(w.astype(np.float32)) for name, w in weights.items()}
    save_file(tensors, str(folder / "toy.safetensors"))
    (folder / "toy.json").write_text('{"hook": "blocks.2.hook_resid_post", "layer": 2}')
    return {name: t.double().numpy() for name, t in tensors.items()}


def test_builtin_formats_in_order():
    assert format_names()[:3] == BUILTIN
    assert saes.FORMATS == format_names()
    assert saes.FORMAT_FILES["batchtopk"] == ("config.json", "sae.pt")
    assert get_format("SAE-Lens").name == "saelens" and get_format("eleuther").name == "sparsify"


def test_a_format_in_one_new_module_is_detected_and_loaded(tmp_path, toy_format):
    assert format_names() == (*BUILTIN, "toy")  # after the built-in ones
    assert "toy" in saes.FORMATS and saes.FORMAT_ALIASES["toy-sae"] == "toy"
    weights = write_toy(tmp_path / "sae")
    assert detect_format(tmp_path / "sae") == "toy"
    sae = load_sae(tmp_path / "sae")
    assert (sae.format, sae.d_in, sae.d_sae) == ("toy", D_IN, D_SAE)
    assert (sae.hook_name, sae.hook_layer) == ("blocks.2.hook_resid_post", 2)
    x = np.random.default_rng(1).normal(size=(16, D_IN))
    expected = np.maximum(x @ weights["W_enc"] + weights["b_enc"], 0)  # by hand, in float64
    ours = sae.encode(torch.from_numpy(x).float()).numpy()
    assert (ours > 0).any() and (ours == 0).any()
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    assert load_sae(tmp_path / "sae", format="Toy-SAE").format == "toy"


def test_a_new_format_joins_the_errors_and_leaves_the_others_alone(tmp_path, toy_format):
    write_toy(tmp_path / "toy")
    with pytest.raises(FaithcaseError, match="not a toy SAE folder: missing toy.json"):
        load_sae(write_batchtopk(tmp_path / "btk", torch.randn(D_SAE, D_IN)), format="toy")
    assert detect_format(tmp_path / "btk") == "batchtopk"
    with pytest.raises(FaithcaseError, match="not a batchtopk SAE folder"):
        load_sae(tmp_path / "toy", format="batchtopk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaithcaseError) as err:
        detect_format(tmp_path / "empty")
    assert str(err.value).endswith(
        "BatchTopK (config.json + sae.pt) or Toy (toy.json + toy.safetensors); found: nothing"
    )


def test_the_toy_format_is_gone_once_the_test_is_undone(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        (tmp_path / f"{TOY_MODULE}.py").write_text(TOY_SOURCE)
        patch.setattr(formats_package, "__path__", [*formats_package.__path__, str(tmp_path)])
        patch.setattr(registry, "_CACHE", None)
        importlib.invalidate_caches()
        assert "toy" in format_names()
    sys.modules.pop(f"{formats_package.__name__}.{TOY_MODULE}", None)
    assert format_names() == BUILTIN


def test_a_module_without_a_declaration_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "notaformat.py").write_text("X = 1\n")
    (tmp_path / "_helper.py").write_text("raise RuntimeError('helpers are not imported')\n")
    monkeypatch.setattr(formats_package, "__path__", [*formats_package.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_CACHE", None)
    importlib.invalidate_caches()
    try:
        with pytest.raises(FaithcaseError, match="notaformat .*declares no FORMAT"):
            format_names()
    finally:
        sys.modules.pop(f"{formats_package.__name__}.notaformat", None)


def test_unknown_format_lists_the_registered_names(tmp_path):
    write_batchtopk(tmp_path / "sae", torch.randn(D_SAE, D_IN))
    with pytest.raises(FaithcaseError) as err:
        load_sae(tmp_path / "sae", format="foo")
    assert str(err.value) == "unknown SAE format 'foo'; choose one of saelens, sparsify, batchtopk"


def test_unknown_format_in_the_config(tmp_path):
    write_batchtopk(tmp_path / "sae", torch.randn(D_SAE, D_IN))
    data = {
        "device": "cpu",
        "hook": "blocks.3.hook_resid_pre",
        "sae1": {"path": "sae", "format": "foo"},
        "sae2": {"path": "sae"},
        "corpus": {"source": "corpus.txt"},
    }
    with pytest.raises(FaithcaseError) as err:  # when the config is read, or the SAE loaded
        Runtime(parse_config(data, tmp_path)).sae("sae1")
    message = str(err.value)
    assert "'foo'" in message and "\n" not in message
    assert all(name in message for name in format_names())
