"""What an assignment solver returns (shared by the dense and the sparse solver)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faithcase.artifacts import SolverInfo


@dataclass
class Solution:
    """A solver's answer, rows being the smaller side."""

    cols: np.ndarray  # column matched to each row
    sims: np.ndarray  # their similarities (float32 values)
    info: SolverInfo
    row_best: np.ndarray  # maximum of every row
    col_best: np.ndarray  # maximum of every column
