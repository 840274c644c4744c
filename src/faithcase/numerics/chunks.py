"""Row chunks that bound how many SAE activations are encoded at once."""

from __future__ import annotations

import torch

MAX_ENCODE_ELEMENTS = 1 << 26  # encode at most this many SAE activations at once


def rows_per_chunk(width: int) -> int:
    """Rows per chunk when each row encodes to `width` activations (at least one row)."""
    return max(1, MAX_ENCODE_ELEMENTS // max(1, int(width)))


def row_chunks(x: torch.Tensor, width: int) -> tuple[torch.Tensor, ...]:
    """x split along its first dimension into chunks of `rows_per_chunk(width)` rows."""
    return x.split(rows_per_chunk(width))
