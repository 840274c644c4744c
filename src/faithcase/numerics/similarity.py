"""Cosine similarity of two sets of vectors, computed in row blocks (the solvers' one primitive)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

BLOCK_ROWS = 2048  # rows of the similarity matrix computed at once


def unit_rows(W: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm in float32 (scaled by their max first, so no over/underflow)."""
    W = W.to(torch.float32)
    W = W / W.abs().amax(dim=1, keepdim=True)
    return W / torch.linalg.vector_norm(W, dim=1, keepdim=True)


def similarity_blocks(A: torch.Tensor, B: torch.Tensor, block_rows: int = BLOCK_ROWS):
    """Yield (first row, A[rows] @ B.T) for consecutive row blocks of unit-row matrices."""
    Bt = B.T
    for start in range(0, A.shape[0], block_rows):
        yield start, A[start : start + block_rows] @ Bt


def selected_row_blocks(
    A: torch.Tensor, B: torch.Tensor, rows: np.ndarray, block_rows: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (row indices, A[those rows] @ B.T) for consecutive blocks of the given rows."""
    Bt = B.T
    for start in range(0, len(rows), block_rows):
        chunk = rows[start : start + block_rows]
        yield chunk, A[torch.from_numpy(chunk)] @ Bt


def full_similarity(A: torch.Tensor, B: torch.Tensor, block_rows: int = BLOCK_ROWS) -> torch.Tensor:
    """The whole float32 similarity matrix [len(A), len(B)] of unit-row matrices."""
    out = torch.empty(A.shape[0], B.shape[0], dtype=torch.float32)
    for start, block in similarity_blocks(A, B, block_rows):
        out[start : start + block.shape[0]] = block
    return out


def cosine_similarity(
    W1: torch.Tensor, W2: torch.Tensor, block_rows: int = BLOCK_ROWS
) -> torch.Tensor:
    """Full float32 cosine similarity [n1, n2] of the rows of two matrices, in row blocks."""
    return full_similarity(unit_rows(W1.detach().cpu()), unit_rows(W2.detach().cpu()), block_rows)
