"""Float64 sums that do not depend on how a stream is split.

A corpus pass adds one partial sum per batch. Added naively, the total depends on the order of the
additions, so a pass split over processes and merged would differ from the single pass in the last
bits. `CompensatedSum` keeps each total as an unevaluated pair hi + lo (Knuth's TwoSum: the
rounding error of every addition is carried in lo), about 106 bits: the value rounded to float64
is the same for any order of the same partial sums, but for totals within ~n·2^-106 of a rounding
boundary.
"""

from __future__ import annotations

import torch


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s, e with s = fl(a + b) and a + b = s + e exactly (float64, elementwise)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


class CompensatedSum:
    """A float64 tensor total of many partial sums, mergeable across shards."""

    def __init__(self, shape: tuple[int, ...] | int = (), device=None):
        self.hi = torch.zeros(shape, dtype=torch.float64, device=device)
        self.lo = torch.zeros_like(self.hi)

    def add(self, partial: torch.Tensor) -> None:
        self.hi, error = two_sum(self.hi, partial.to(self.hi.device, torch.float64))
        self.lo += error

    def add_at(self, index: torch.Tensor, partial: torch.Tensor) -> None:
        """Add partial[k] at self[index[k]] (unique indices), e.g. per token id."""
        hi, error = two_sum(self.hi[index], partial.to(self.hi.device, torch.float64))
        self.hi[index] = hi
        self.lo[index] += error

    def merge(self, other: "CompensatedSum") -> None:
        self.hi, error = two_sum(self.hi, other.hi.to(self.hi.device))
        self.lo += other.lo.to(self.lo.device) + error

    def grow(self, rows: int) -> None:
        """Zero rows appended along the first dimension, up to `rows`."""
        if rows > self.hi.shape[0]:
            pad = (rows - self.hi.shape[0], *self.hi.shape[1:])
            self.hi = torch.cat([self.hi, self.hi.new_zeros(pad)])
            self.lo = torch.cat([self.lo, self.lo.new_zeros(pad)])

    @property
    def value(self) -> torch.Tensor:
        return self.hi + self.lo

    def state(self) -> dict:
        return {"hi": self.hi.cpu(), "lo": self.lo.cpu()}

    @classmethod
    def from_state(cls, state: dict) -> "CompensatedSum":
        total = cls()
        total.hi, total.lo = state["hi"].clone(), state["lo"].clone()
        return total
