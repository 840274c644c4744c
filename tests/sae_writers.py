"""SAE folders of each format with a given decoder, written by each format's own code (shared by tests)."""

import json
import os
from pathlib import Path

import torch

from faithcase.saes import SAE, save_saelens

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's eager decoder on CPU

D_IN, D_SAE, K = 24, 64, 4


def write_saelens(folder: Path, W_dec: torch.Tensor) -> Path:
    sae = SAE(W_enc=W_dec.T.contiguous(), b_enc=torch.zeros(D_SAE), W_dec=W_dec.contiguous(),
              b_dec=torch.zeros(D_IN), activation="topk", k=K, hook_name="blocks.3.hook_resid_pre", hook_layer=3)
    save_saelens(sae, folder)
    return folder


def write_sparsify(folder: Path, W_dec: torch.Tensor) -> Path:
    from sparsify import SparseCoder, SparseCoderConfig

    coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K), dtype=torch.float32)
    with torch.no_grad():
        coder.W_dec.copy_(W_dec)
        coder.encoder.weight.copy_(W_dec)
    coder.save_to_disk(folder)
    return folder


def write_batchtopk(folder: Path, W_dec: torch.Tensor, W_enc: torch.Tensor | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {"W_enc": (W_dec.T if W_enc is None else W_enc).contiguous(), "W_dec": W_dec.contiguous(),
             "b_enc": torch.zeros(W_dec.shape[0]), "b_dec": torch.zeros(W_dec.shape[1])}
    torch.save(state, folder / "sae.pt")
    config = {"sae_type": "topk", "act_size": W_dec.shape[1], "dict_size": W_dec.shape[0], "top_k": K,
              "input_unit_norm": False, "hook_point": "blocks.3.hook_resid_pre", "layer": 3}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


WRITERS = {"saelens": write_saelens, "sparsify": write_sparsify, "batchtopk": write_batchtopk}


def planted_decoders(seed=0, noise=0.01):
    """Decoder 2 = decoder 1 with rows permuted plus a little noise; returns (W1, W2, perm)."""
    g = torch.Generator().manual_seed(seed)
    W1 = torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=g), dim=-1)
    perm = torch.randperm(D_SAE, generator=g)
    W2 = W1[perm] + noise * torch.randn(D_SAE, D_IN, generator=g)
    return W1, W2, perm
