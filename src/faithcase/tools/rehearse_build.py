"""Seeded, random-weight stand-ins at the paper's shapes, for a local rehearsal of every stage.

The paper setting is Llama-3.2-1B with two TopK SAEs (k=48, 14,336 features) on
`blocks.12.hook_resid_pre`. Here:
- `build_paper_model`: a LlamaForCausalLM with Llama-3.2-1B's architecture, its tokenizer (the
  Llama 3 tokenizer, 128,256 tokens, built offline from llama-models: `llama3_tokenizer.py`), tied
  embeddings and random weights (the model's own init, seeded), in bfloat16;
- `build_paper_saes`: two BatchTopK (FaithfulSAE) folders with independent random decoders that
  share `n_planted` near-identical rows at different indices (the pairs a matching must find);
- `build_rehearsal_corpus`: a .jsonl corpus from the demo's held-out texts (repeated as needed).
A folder already built with the same settings (its `rehearsal.json` stamp) is not rebuilt.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faithcase.model import corpus, lm
from faithcase.run.errors import FaithcaseError
from faithcase.saes import layer_from_hook

TOKENIZER_NAME = "llama3 (llama-models 0.3.0 tokenizer.model)"
DEMO_CORPUS = "pkg:faithcase/demo/bundle/corpus_heldout.jsonl.gz"
PAPER_HOOK = "blocks.12.hook_resid_pre"
REHEARSAL_MODEL_NAME = "rehearsal/llama-3.2-1b-random"
STAMP = "rehearsal.json"
PLANTED = "planted.json"

# Llama-3.2-1B (meta-llama/Llama-3.2-1B config.json), all but the vocabulary and the shape.
LLAMA_3_2_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
PAPER_SHAPE = {"n_layers": 16, "d_model": 2048, "n_heads": 32, "n_kv_heads": 8,
               "intermediate": 8192}
LLAMA_3_2_MAX_POSITIONS = 131072  # only a number in the config: rotary angles are computed per call
PLANTED_NOISE = 0.05  # norm of the noise on each twin row: cosine of a planted pair >= 0.995
CENTERING_SEQUENCES, CENTERING_SEQ_LEN = 8, 64  # b_dec = mean residual over these tokens


def rehearsal_tokenizer():
    """Llama-3.2-1B's tokenizer, built offline from llama-models (once per process, shared: do
    not modify it); a one-line error when the package is missing."""
    from faithcase.tools.llama3_tokenizer import llama3_tokenizer

    return llama3_tokenizer()


# ---------------------------------------------------------------- the model

def paper_model_config(vocab_size: int, n_layers: int = 16, d_model: int = 2048, n_heads: int = 32,
                       n_kv_heads: int = 8, intermediate: int = 8192, **token_ids):
    """Llama-3.2-1B's architecture (default shape) with `vocab_size` tokens; `token_ids`
    (bos_token_id, eos_token_id, pad_token_id) are passed to the config."""
    from transformers import LlamaConfig

    if d_model % n_heads or n_heads % n_kv_heads:
        raise FaithcaseError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads}),"
                             f" and n_heads of n_kv_heads ({n_kv_heads})")
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=intermediate,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
        head_dim=d_model // n_heads, hidden_act="silu",
        max_position_embeddings=LLAMA_3_2_MAX_POSITIONS, rms_norm_eps=1e-5,
        rope_parameters=dict(LLAMA_3_2_ROPE), tie_word_embeddings=True,
        initializer_range=0.02, attention_bias=False, mlp_bias=False, **token_ids)


def build_paper_model(folder: Path, seed: int = 0, dtype: str = "bfloat16", **shape) -> Path:
    """A random-weight LlamaForCausalLM (see `paper_model_config`) with the Llama 3 tokenizer,
    saved in `folder` (safetensors); skipped when the folder's stamp has the same settings."""
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    if set(shape) - set(PAPER_SHAPE):
        unknown = sorted(set(shape) - set(PAPER_SHAPE))
        raise FaithcaseError(f"unknown model shape settings {unknown}; use {list(PAPER_SHAPE)}")
    shape = {**PAPER_SHAPE, **shape}
    tokenizer = rehearsal_tokenizer()
    settings = {"kind": "model", "seed": seed, "dtype": dtype, "shape": shape,
                "vocab_size": len(tokenizer), "tokenizer": TOKENIZER_NAME}
    if _stamp_matches(folder, settings) and any(folder.glob("model*.safetensors")):
        return folder
    _clear_stamp(folder)
    config = paper_model_config(len(tokenizer), **shape, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):  # seeds the model's init, leaves the caller's RNG alone
        torch.manual_seed(seed)
        # built directly in dtype
        model = LlamaForCausalLM._from_config(config, dtype=lm.resolve_dtype(dtype))
    model.eval().requires_grad_(False)
    check_residual_stream(model, tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _write_stamp(folder, settings)
    return folder


@torch.no_grad()
def check_residual_stream(model, tokenizer, text: str = "The capital of France is Paris.") -> None:
    """Fail unless every layer's residual is finite and differs between tokens."""
    text_ids = tokenizer.encode(text, add_special_tokens=False)
    ids = torch.tensor([[tokenizer.bos_token_id] + text_ids])
    hidden = model(ids, output_hidden_states=True, use_cache=False, logits_to_keep=1).hidden_states
    for layer, h in enumerate(hidden):
        norms = h[0].float().norm(dim=-1)
        if not torch.isfinite(h).all() or norms.std() <= 1e-6 * norms.mean():
            raise FaithcaseError(f"degenerate residual stream at hidden_states[{layer}]: "
                                 f"token norms {norms.tolist()}")


# ---------------------------------------------------------------- the SAEs

def build_paper_saes(folder: Path, d_in: int = 2048, d_sae: int = 14336, k: int = 48,
                     n_planted: int = 16, seeds: tuple[int, int] = (42, 49),
                     model_folder: Path | None = None, hook: str = PAPER_HOOK,
                     model_name: str = REHEARSAL_MODEL_NAME) -> dict[str, Any]:
    """Two BatchTopK SAE folders `<folder>/seed<s>` (config.json + sae.pt, float32 tensors).

    Decoder rows are random unit vectors drawn from each SAE's seed, except `n_planted` rows:
    one shared unit direction per pair plus noise of norm PLANTED_NOISE, at different seeded
    indices in the two SAEs. W_enc = W_dec.T; b_enc = 0; b_dec = the mean residual at `hook`
    of `model_folder`'s model (BOS excluded) when given, else 0. Returns (and writes to
    `<folder>/planted.json`) the planted pairs [(index in SAE 1, index in SAE 2), ...].
    """
    folder = Path(folder)
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise FaithcaseError(f"give two different seeds, got {seeds}")
    if not 0 <= n_planted <= d_sae // 2 or not 0 < k <= d_sae:
        raise FaithcaseError(f"need 0 <= n_planted <= d_sae/2 and 0 < k <= d_sae"
                             f" (n_planted {n_planted}, k {k}, d_sae {d_sae})")
    layer = layer_from_hook(hook)
    model_stamp = _read_stamp(Path(model_folder)) if model_folder else None
    if model_folder and model_stamp is None:
        raise FaithcaseError(f"{model_folder} holds no rehearsal model (no {STAMP}); "
                             "build it with build_paper_model")
    settings = {"kind": "saes", "d_in": d_in, "d_sae": d_sae, "k": k, "n_planted": n_planted,
                "seeds": list(seeds), "hook": hook, "model_name": model_name,
                "model": model_stamp}
    if _stamp_matches(folder, settings) and (folder / PLANTED).is_file():
        return _planted_result(json.loads((folder / PLANTED).read_text()))
    _clear_stamp(folder)

    decoders, (index1, index2) = _planted_decoders(d_in, d_sae, n_planted, seeds)
    b_dec = mean_residual(model_folder, hook) if model_folder else torch.zeros(d_in)
    if b_dec.shape != (d_in,):
        raise FaithcaseError(f"the model's residual at {hook} has width {b_dec.shape[0]}, "
                             f"not d_in={d_in}")
    for W, s in zip(decoders, seeds):
        config = {"sae_type": "topk", "act_size": d_in, "dict_size": d_sae, "top_k": k,
                  "input_unit_norm": False, "hook_point": hook, "layer": layer, "seed": s,
                  "dtype": "torch.bfloat16", "model_name": model_name}
        _write_sae(folder / f"seed{s}", W, b_dec, config)
    data = {"planted": [[int(i), int(j)] for i, j in zip(index1, index2)], "seeds": list(seeds),
            "sae1": f"seed{seeds[0]}", "sae2": f"seed{seeds[1]}",
            "b_dec": "mean residual" if model_folder else "zero"}
    (folder / PLANTED).write_text(json.dumps(data, indent=2) + "\n")
    _write_stamp(folder, settings)
    return _planted_result(data)


def _planted_decoders(d_in: int, d_sae: int, n_planted: int, seeds: tuple[int, int]
                      ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The two random unit-row decoders with their planted twins, and the planted indices."""
    decoders = [random_unit_rows(d_sae, d_in, _generator(s)) for s in seeds]
    index1, index2 = planted_indices(d_sae, n_planted, seeds)
    shared = random_unit_rows(n_planted, d_in, _generator(_pair_seed(seeds)))
    for W, index, s in zip(decoders, (index1, index2), seeds):
        noise = random_unit_rows(n_planted, d_in, _generator(_pair_seed((s,) + tuple(seeds))))
        W[index] = _unit(shared + PLANTED_NOISE * noise)
    return decoders, (index1, index2)


def _write_sae(sub: Path, W: torch.Tensor, b_dec: torch.Tensor, config: dict[str, Any]) -> None:
    """One FaithfulSAE folder: sae.pt (W_enc = W_dec.T, b_enc = 0) and config.json."""
    sub.mkdir(parents=True, exist_ok=True)
    state = {"W_enc": W.T.contiguous(), "W_dec": W, "b_enc": torch.zeros(W.shape[0]),
             "b_dec": b_dec.clone()}
    torch.save(state, sub / "sae.pt")
    (sub / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def random_unit_rows(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """n float32 rows drawn uniformly on the unit sphere of R^d."""
    return _unit(torch.randn(n, d, generator=generator))


def planted_indices(d_sae: int, n_planted: int,
                    seeds: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded indices of the planted rows in each SAE; a pair never sits at the same index."""
    index1 = torch.randperm(d_sae, generator=_generator(seeds[0]))[:n_planted]
    candidates = iter(torch.randperm(d_sae, generator=_generator(seeds[1])).tolist())
    index2 = []
    for i in index1.tolist():
        j = next(candidates)
        while j == i:
            j = next(candidates)
        index2.append(j)
    return index1, torch.tensor(index2, dtype=torch.long)


@torch.no_grad()
def mean_residual(model_folder: Path, hook: str) -> torch.Tensor:
    """Float32 mean of the model's activation at `hook` over the demo held-out corpus's first
    CENTERING_SEQUENCES sequences, BOS positions excluded (what faithcase's model sees)."""
    model = lm.load_model(REHEARSAL_MODEL_NAME, path=str(model_folder), device="cpu",
                          dtype=_read_stamp(Path(model_folder))["dtype"])
    tokens = corpus.token_sequences(corpus.load_texts(DEMO_CORPUS), model.tokenizer,
                                    seq_len=CENTERING_SEQ_LEN,
                                    max_tokens=CENTERING_SEQUENCES * CENTERING_SEQ_LEN, seed=0)
    acts = model.activations(tokens, hook)[:, 1:]
    return acts.float().reshape(-1, acts.shape[-1]).mean(dim=0)


def _unit(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=-1, keepdim=True)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair_seed(seeds: tuple[int, ...]) -> int:
    """One 63-bit seed derived from several (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(seeds)).generate_state(1, np.uint64)[0]) >> 1


def _planted_result(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "planted": [(int(i), int(j)) for i, j in data["planted"]]}


# ---------------------------------------------------------------- the corpus

def build_rehearsal_corpus(path: Path, n_tokens: int = 4000) -> Path:
    """A .jsonl file ({"text": ...} per line) of the demo held-out texts, in order and started
    over when they run out, holding at least `n_tokens` tokens under the Llama 3 tokenizer
    (special tokens not counted)."""
    path = Path(path)
    texts = list(corpus.load_texts(DEMO_CORPUS))
    encoded = rehearsal_tokenizer()(texts, add_special_tokens=False)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    if sum(lengths) == 0:
        raise FaithcaseError(f"the demo corpus {DEMO_CORPUS} holds no tokens")
    lines, count = [], 0
    for text, length in itertools.cycle(zip(texts, lengths)):
        if count >= n_tokens:
            break
        count += length
        lines.append(json.dumps({"text": text}, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- stamps

def _read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _stamp_matches(folder: Path, settings: dict[str, Any]) -> bool:
    # compared as JSON (tuples → lists)
    return _read_stamp(folder) == json.loads(json.dumps(settings))


def _clear_stamp(folder: Path) -> None:
    """Removed before a rebuild, so an interrupted build is never taken as done."""
    (folder / STAMP).unlink(missing_ok=True)


def _write_stamp(folder: Path, settings: dict[str, Any]) -> None:
    (folder / STAMP).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


__all__ = [
    "paper_model_config",
    "build_paper_model",
    "build_paper_saes",
    "build_rehearsal_corpus",
    "check_residual_stream",
    "mean_residual",
    "planted_indices",
    "random_unit_rows",
    "rehearsal_tokenizer",
]
