"""Remote-code embedders under transformers 5, on a tiny model written here with stella's two traits
(its forward calls `get_extended_attention_mask`; it computes non-persistent position and rotary
buffers in `__init__`); the embedder self-test; load errors that report their real cause."""

import importlib.util
import json
import secrets
import shutil
import sys

import numpy as np
import pytest
import torch

from faithcase.config import EmbedConfig
from faithcase.model import remote_code
from faithcase.model.embedder import (
    SELF_TEST_PAIRS,
    Embedder,
    check_self_test,
    load_embedder,
    self_test,
)
from faithcase.run.errors import FaithcaseError
from faithcase.run.paths import resolve_path

MINILM = resolve_path(EmbedConfig().model)
TEXTS = ["The dog chased the ball.", "def add(a, b): return a + b",
         "Paris is in France; the train there from London takes a little over two hours."]
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

MODELING = '''
"""A tiny rotary encoder written the transformers 4.x way (test fixture)."""
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class TinyRopeConfig(PretrainedConfig):
    model_type = "tiny_rope"

    def __init__(self, vocab_size=30522, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                 max_position_embeddings=64, rope_theta=10000.0, rope_factor=2.0,
                 initializer_range=0.3, use_memory_efficient_attention=True, unpad_inputs=True,
                 **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rope_factor = rope_factor
        self.initializer_range = initializer_range
        self.use_memory_efficient_attention = use_memory_efficient_attention
        self.unpad_inputs = unpad_inputs
        super().__init__(**kwargs)


class Rotary(nn.Module):
    def __init__(self, dim, max_positions, theta, factor):
        super().__init__()
        base = theta * factor ** (dim / (dim - 2))  # NTK-style scaled base, as stella's rope
        inv_freq = 1.0 / base ** (torch.arange(0, dim, 2).float() / dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        angles = torch.outer(torch.arange(max_positions).float(), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos_cached", angles.cos(), persistent=False)
        self.register_buffer("sin_cached", angles.sin(), persistent=False)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin


class TinyLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(config.hidden_size, 2 * config.hidden_size), nn.GELU(),
                                 nn.Linear(2 * config.hidden_size, config.hidden_size))
        self.attn_norm = nn.LayerNorm(config.hidden_size)
        self.mlp_norm = nn.LayerNorm(config.hidden_size)

    def forward(self, hidden, bias, cos, sin):
        batch, seq, width = hidden.shape
        q, k, v = (t.view(batch, seq, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(hidden).chunk(3, dim=-1))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, width)
        hidden = self.attn_norm(hidden + self.out(context))
        return self.mlp_norm(hidden + self.mlp(hidden))


class TinyRopeModel(PreTrainedModel):
    config_class = TinyRopeConfig
    base_model_prefix = "tiny"

    def __init__(self, config):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings),
                             persistent=False)
        head_dim = config.hidden_size // config.num_attention_heads
        self.rotary = Rotary(head_dim, config.max_position_embeddings, config.rope_theta,
                             config.rope_factor)
        self.layers = nn.ModuleList(TinyLayer(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, return_dict=None,
                **kwargs):
        if self.config.use_memory_efficient_attention or self.config.unpad_inputs:
            raise RuntimeError("the xformers path: load with use_memory_efficient_attention and "
                               "unpad_inputs off")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        bias = self.get_extended_attention_mask(attention_mask, input_ids.shape)
        positions = self.position_ids[: input_ids.shape[1]]
        cos, sin = self.rotary.cos_cached[positions], self.rotary.sin_cached[positions]
        hidden = self.norm(self.word_embeddings(input_ids))
        for layer in self.layers:
            hidden = layer(hidden, bias, cos, sin)
        return BaseModelOutput(last_hidden_state=hidden)
'''

CONFIG = {"model_type": "tiny_rope", "architectures": ["TinyRopeModel"],
          "auto_map": {"AutoConfig": "modeling_tiny.TinyRopeConfig",
                       "AutoModel": "modeling_tiny.TinyRopeModel"},
          "vocab_size": 30522, "hidden_size": 32, "num_attention_heads": 4,
          "num_hidden_layers": 2, "max_position_embeddings": 64, "rope_theta": 10000.0,
          "rope_factor": 2.0, "initializer_range": 0.3, "pad_token_id": 0,
          "use_memory_efficient_attention": True, "unpad_inputs": True, "dtype": "float32"}


def import_modeling(folder):
    """The fixture's modeling module, imported directly (not through transformers)."""
    name = f"tiny_rope_reference_{abs(hash(str(folder)))}"
    spec = importlib.util.spec_from_file_location(name, folder / "modeling_tiny.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A sentence-transformers folder holding a remote-code model: config.json's auto_map points
    at modeling_tiny.py; weights saved from a seeded instance; MiniLM's tokenizer."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny-rope")
    (folder / "modeling_tiny.py").write_text(MODELING)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM / name, folder / name)
    shutil.copytree(MINILM / "1_Pooling", folder / "1_Pooling")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    modeling = import_modeling(folder)
    torch.manual_seed(0)
    model = modeling.TinyRopeModel(modeling.TinyRopeConfig(**CONFIG))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def reference_embeddings(folder, texts):
    """The fixture model run by hand: the class built directly on the CPU with the xformers
    options off, the saved weights loaded, its own mask helper, mean pooling, unit norm."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    modeling = import_modeling(folder)

    class Reference(modeling.TinyRopeModel):
        def get_extended_attention_mask(self, mask, input_shape):
            return (1.0 - mask[:, None, None, :].float()) * -1e30

    config = modeling.TinyRopeConfig(**(CONFIG | remote_code_off()))
    model = Reference(config).eval()
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))  # the files the fixture copied
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def remote_code_off():
    return {"use_memory_efficient_attention": False, "unpad_inputs": False}


def own_copy(tiny_folder, tmp_path):
    """A copy of the fixture under a folder name of its own: transformers names the module it
    imports the code into after the folder, so each copy gets its own class, untouched by the
    layer in other tests."""
    folder = tmp_path / tmp_path.name
    shutil.copytree(tiny_folder, folder)
    return folder


def plain_load(folder):
    """The folder loaded by sentence-transformers alone, as faithcase did before the layer."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True,
                               trust_remote_code=True, config_kwargs=remote_code_off())


def auto_model(st_model):
    return st_model[0].auto_model


# ------------------------------------------------------------------------------ without the layer

def test_without_the_layer_the_mask_helper_is_missing(tiny_folder, tmp_path):
    model = plain_load(own_copy(tiny_folder, tmp_path))
    assert not hasattr(auto_model(model), "get_extended_attention_mask")
    with pytest.raises(AttributeError, match="get_extended_attention_mask"):
        model.encode(TEXTS)


def test_without_the_layer_the_buffers_are_not_recomputed(tiny_folder, tmp_path):
    st_model = plain_load(own_copy(tiny_folder, tmp_path))
    model = auto_model(st_model)
    fresh = import_modeling(tiny_folder).TinyRopeModel(model.config)
    for name in ("position_ids", "rotary.inv_freq", "rotary.cos_cached", "rotary.sin_cached"):
        loaded, expected = model.get_buffer(name), fresh.get_buffer(name)
        assert loaded.shape == expected.shape and not torch.equal(loaded, expected), name
    # with the mask helper alone, the embeddings come out wrong or not at all
    remote_code.install_mask_helpers(model)
    try:
        vectors = st_model.encode(TEXTS, normalize_embeddings=True)
    except (IndexError, RuntimeError) as err:  # garbage position_ids index past the rotary cache
        assert "index" in str(err).lower()
    else:
        # wrong: far from the reference, or not numbers at all (uninitialised buffers can hold
        # anything, NaN included)
        assert not np.allclose(vectors, reference_embeddings(tiny_folder, TEXTS), atol=1e-2)


# --------------------------------------------------------------------------------- with the layer

def test_with_the_layer_embeddings_equal_a_reference_computation(tiny_folder, tmp_path):
    embedder = load_embedder(str(own_copy(tiny_folder, tmp_path)), device="cpu",
                             trust_remote_code=True, self_test=False)
    assert embedder.config_kwargs == remote_code_off()
    report = embedder.remote_code
    assert report is not None and report.models == ["TinyRopeModel"]
    assert set(report.helpers) == {"get_extended_attention_mask", "invert_attention_mask",
                                   "get_head_mask"}
    assert set(report.buffers) == {"position_ids", "rotary.inv_freq", "rotary.cos_cached",
                                   "rotary.sin_cached"} == set(report.changed)
    assert not report.unmatched
    assert report.summary == ("remote code TinyRopeModel; added get_extended_attention_mask, "
                              "invert_attention_mask, get_head_mask; recomputed 4 buffers "
                              "(4 were wrong)")
    np.testing.assert_allclose(embedder.embed(TEXTS), reference_embeddings(tiny_folder, TEXTS),
                               atol=1e-5)


def test_the_layer_never_overrides_a_method_the_class_has():
    class WithOwnMask(torch.nn.Module):
        def get_extended_attention_mask(self, mask, shape):
            return "own"

    model = WithOwnMask()
    installed = remote_code.install_mask_helpers(model)
    assert "get_extended_attention_mask" not in installed
    assert model.get_extended_attention_mask(None, None) == "own"


def test_mask_helpers_match_transformers_4_semantics():
    class Holder(torch.nn.Module):
        dtype = torch.float16
        config = None

    holder = Holder()
    remote_code.install_mask_helpers(holder)
    mask = torch.tensor([[1, 1, 0]])
    bias = holder.get_extended_attention_mask(mask, mask.shape)
    assert bias.shape == (1, 1, 1, 3) and bias.dtype == torch.float16
    assert bias[0, 0, 0].tolist() == [0.0, 0.0, torch.finfo(torch.float16).min]
    square = holder.get_extended_attention_mask(torch.ones(1, 3, 3), (1, 3))
    assert square.shape == (1, 1, 3, 3) and not square.any()
    assert holder.get_head_mask(None, 4) == [None] * 4


def test_code_revision_is_pinned_only_for_known_code_repos():
    stella_map = {"AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
                  "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel"}
    assert remote_code.code_revision(stella_map) == remote_code.NEW_IMPL_REVISION
    assert len(remote_code.NEW_IMPL_REVISION) == 40
    assert remote_code.code_revision(CONFIG["auto_map"]) is None  # code in the model's folder
    assert remote_code.code_revision({"AutoModel": "someone/else--modeling.Model"}) is None


def code_elsewhere(tiny_folder, tmp_path, monkeypatch):
    """The fixture with its code moved to a hub repo `fake-org/tiny-code` in a Hugging Face cache
    of its own (as stella's is in Alibaba-NLP/new-impl): two commits, `main` a broken one."""
    import huggingface_hub.constants

    folder = own_copy(tiny_folder, tmp_path)
    (folder / "modeling_tiny.py").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {key: f"fake-org/tiny-code--{value}"
                          for key, value in config["auto_map"].items()}
    (folder / "config.json").write_text(json.dumps(config))
    cache = tmp_path / "hub"
    repo = cache / "models--fake-org--tiny-code"
    good, broken = secrets.token_hex(20), secrets.token_hex(20)  # commits of its own
    for commit, code in ((good, MODELING), (broken, MODELING.replace(
            "hidden = self.norm(", 'raise RuntimeError("the code on main")  # ', 1))):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "modeling_tiny.py").write_text(code)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(broken)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return folder, good


def test_the_pinned_code_revision_is_the_code_that_runs(tiny_folder, tmp_path, monkeypatch):
    folder, good = code_elsewhere(tiny_folder, tmp_path, monkeypatch)
    unpinned = load_embedder(str(folder), device="cpu", trust_remote_code=True, self_test=False)
    with pytest.raises(RuntimeError, match="the code on main"):
        unpinned.embed(TEXTS)

    monkeypatch.setattr(remote_code, "PINNED_CODE_REVISIONS", {"fake-org/tiny-code": good})
    embedder = load_embedder(str(folder), device="cpu", trust_remote_code=True, self_test=False)
    model = auto_model(embedder.model)
    assert good in type(model).__module__ and good in type(model.config).__module__
    np.testing.assert_allclose(embedder.embed(TEXTS), reference_embeddings(tiny_folder, TEXTS),
                               atol=1e-5)


def test_offline_the_pinned_code_must_be_cached(tiny_folder, tmp_path, monkeypatch):
    from faithcase.model.embedder import resolve_embedder

    folder, _ = code_elsewhere(tiny_folder, tmp_path, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(remote_code, "PINNED_CODE_REVISIONS", {"fake-org/tiny-code": "f" * 40})
    with pytest.raises(FaithcaseError, match=f"at revision {'f' * 40} is not in the local"):
        resolve_embedder(str(folder), trust_remote_code=True)


def test_plain_models_are_left_untouched():
    embedder = load_embedder(device="cpu", self_test=False)
    assert embedder.remote_code is None
    assert not hasattr(auto_model(embedder.model), "get_extended_attention_mask")


# ------------------------------------------------------------------------------------- self-test

class Constant:
    """A model that embeds every text as the same vector."""

    def encode(self, texts, **kwargs):
        return np.ones((len(texts), 8), dtype=np.float32) / np.sqrt(8)

    def get_sentence_embedding_dimension(self):
        return 8


class Random(Constant):
    """A model that embeds texts as seeded random vectors."""

    def encode(self, texts, **kwargs):
        vectors = np.random.default_rng(0).normal(size=(len(texts), 64)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_self_test_passes_on_the_demo_minilm_with_a_margin():
    embedder = load_embedder(device="cpu")  # runs the self-test on load
    result = self_test(embedder)
    assert result.passed and result.error is None and result.name == EmbedConfig().model
    assert len(result.rows) == len(SELF_TEST_PAIRS) >= 4
    assert all(row.top == row.expected for row in result.rows)
    assert min(row.margin for row in result.rows) > 0.2
    assert result.summary.startswith(f"{len(SELF_TEST_PAIRS)}/{len(SELF_TEST_PAIRS)} queries")
    assert embedder.n_calls == 0 and embedder.n_encoded_texts == 0  # not counted as work
    check_self_test(embedder)


@pytest.mark.parametrize("model", [Constant(), Random()], ids=["constant", "random"])
def test_self_test_refuses_a_broken_embedder_in_one_line(model):
    embedder = Embedder(model, name="broken-embedder")
    result = self_test(embedder)
    assert not result.passed
    with pytest.raises(FaithcaseError, match="broken-embedder") as err:
        check_self_test(embedder)
    assert "\n" not in str(err.value) and "ranked" in str(err.value)


def test_self_test_reports_an_embedder_that_raises():
    class Raising(Constant):
        def encode(self, texts, **kwargs):
            raise AttributeError("'NewModel' object has no attribute 'get_extended_attention_mask'")

    result = self_test(Embedder(Raising(), name="raising"))
    assert not result.passed and result.error.startswith("AttributeError: ")
    with pytest.raises(FaithcaseError, match="raising.*AttributeError"):
        check_self_test(Embedder(Raising(), name="raising"))


def test_load_embedder_runs_the_self_test_unless_told_not_to(monkeypatch):
    from faithcase.model import embedder as embedder_module

    tested = []
    monkeypatch.setattr(embedder_module, "check_self_test", tested.append)
    load_embedder(device="cpu")
    assert [e.name for e in tested] == [EmbedConfig().model]
    load_embedder(device="cpu", self_test=False)
    assert len(tested) == 1


# ------------------------------------------------------------------------------------ load errors

@pytest.mark.parametrize("damage", ["config", "weights"])
def test_a_damaged_model_reports_the_real_cause_not_not_found(tiny_folder, tmp_path, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_folder, folder)
    if damage == "config":
        (folder / "config.json").write_text("{ not json")
    else:
        (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(FaithcaseError) as err:
        load_embedder(str(folder), device="cpu", trust_remote_code=True)
    message = str(err.value)
    assert "not found" not in message and "\n" not in message
    assert message.startswith(f"embedding model {folder} failed to load: ")
    assert len(message) < 400
