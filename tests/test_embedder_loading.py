"""Loading the embedder: the stella path (xformers-only attention options off on CPU) on the demo's
MiniLM, and a model that cannot load failing in one line before any model pass."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from faithcase.cli import app
from faithcase.config import EmbedConfig
from faithcase.model.embedder import ATTENTION_OFF, load_embedder, resolve_embedder
from faithcase.pipeline import check_embedder
from faithcase.run.errors import FaithcaseError
from faithcase.run.paths import resolve_path

MINILM = resolve_path(EmbedConfig().model)
TEXTS = ["The dog chased the ball.", "def add(a, b): return a + b", "Paris is in France."]


def stella_like(tmp_path, **config):
    """The demo's MiniLM, its config declaring stella's xformers-only attention options."""
    folder = tmp_path / "stella-like"
    shutil.copytree(MINILM, folder)
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text())
                               | {"use_memory_efficient_attention": True, "unpad_inputs": True}
                               | config))
    return folder


def test_stella_loading_path_on_minilm_embeds_like_a_plain_load(tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = stella_like(tmp_path)
    embedder = load_embedder(str(folder), device="cpu", batch_size=8)
    assert embedder.config_kwargs == ATTENTION_OFF  # CPU: both off, as the stella card says
    config = embedder.model[0].auto_model.config
    assert config.use_memory_efficient_attention is False and config.unpad_inputs is False
    plain = SentenceTransformer(str(MINILM), device="cpu")
    expected = plain.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_array_equal(embedder.embed(TEXTS), expected.astype(np.float32))


def test_models_without_those_options_load_unchanged():
    assert load_embedder(device="cpu").config_kwargs == {}


def test_remote_code_needs_trust(tmp_path):
    folder = stella_like(tmp_path, auto_map={"AutoModel": "modeling.NewModel"})
    with pytest.raises(FaithcaseError, match="trust_remote_code"):
        resolve_embedder(str(folder))
    with pytest.raises(FaithcaseError, match="modeling.NewModel"):  # offline, no modeling.py
        resolve_embedder(str(folder), trust_remote_code=True)
    (folder / "modeling.py").write_text("")
    assert resolve_embedder(str(folder), trust_remote_code=True).folder == folder


@pytest.mark.parametrize("spec", ["/no/such/embedder", "dunzhang/stella_en_400M_v5"])
def test_unloadable_embedder_is_one_line(spec):
    with pytest.raises(FaithcaseError) as err:  # the hub id: not cached, HF_HUB_OFFLINE=1
        resolve_embedder(spec, trust_remote_code=True)
    assert "\n" not in str(err.value) and spec in str(err.value)


def test_check_embedder_only_when_embed_will_run():
    rt = SimpleNamespace(cfg=SimpleNamespace(embed=EmbedConfig(model="/no/such/embedder")),
                         base_dir=lambda: None)
    cached = SimpleNamespace(force=frozenset(), is_fresh=lambda name: True)
    check_embedder(rt, cached)  # embed is up to date: no embedder needed
    check_embedder(rt, SimpleNamespace(force=frozenset(), is_fresh=lambda name: False),
                   targets=("match",))  # not a target
    for stale in (SimpleNamespace(force=frozenset(), is_fresh=lambda name: False),
                  SimpleNamespace(force=frozenset({"embed"}), is_fresh=lambda name: True)):
        with pytest.raises(FaithcaseError, match="embedding model not found"):
            check_embedder(rt, stale)


def test_run_with_a_missing_embedder_fails_before_the_model_loads(tmp_path, monkeypatch):
    from faithcase.model import lm

    calls = []
    monkeypatch.setattr(lm, "load_model", lambda *a, **k: calls.append(a) or 1 / 0)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--out-dir", str(out),
                                      "--set", "embed.model=/no/such/embedder"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any("embedding model not found: /no/such/embedder" in line for line in lines)
    assert calls == []  # the language model was never loaded, so never run
    assert not (out / "match.json").exists()  # no stage ran
