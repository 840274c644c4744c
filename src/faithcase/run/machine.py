"""What is fast on this machine: the dtype a model or an SAE computes in.

A checkpoint declares its dtype (bf16 for the demo SAEs and Llama 3). On a GPU that dtype is
used. On a CPU without native half-precision matmul (plain AVX2: no AVX-512 BF16, no AMX)
torch's bf16 matmul runs single-threaded and ~40-150x slower than float32, so there the math
runs in float32; the results agree to rounding. Whether half is fast is measured on a small
matmul, not guessed from CPU flags: it is what torch's kernels do that counts (oneDNN can also be
capped, e.g. ONEDNN_MAX_CPU_ISA=AVX2). The verdict is measured once per machine and kept in the
faithcase cache folder (`$FAITHCASE_CACHE/half-matmul.json`), keyed by the CPU, torch and those
settings, so that every process on a machine decides alike, a busy one too.
FAITHCASE_HALF_MATMUL=fast|slow skips the measurement.

An explicit dtype in the config always wins.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from faithcase.run.errors import FaithcaseError
from faithcase.run.paths import cache_dir

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
HALF = (torch.bfloat16, torch.float16)
HALF_MATMUL_ENV = "FAITHCASE_HALF_MATMUL"
PROBE_SHAPE = (256, 512, 1024)  # rows x d_in x d_out of the probe matmul
PROBE_REPEATS = 5
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise FaithcaseError(f"Unknown dtype '{dtype}'; use one of {', '.join(sorted(DTYPES))}.")
    return DTYPES[dtype]


@dataclass(frozen=True)
class DtypeChoice:
    """The checkpoint's declared dtype, the dtype used, and why they differ ('' when equal)."""

    declared: torch.dtype
    used: torch.dtype
    reason: str = ""

    def describe(self, what: str) -> str:
        """E.g. 'sae1 declares bfloat16; computing in float32 (bf16 matmul 42x slower here)'."""
        return (f"{what} declares {dtype_name(self.declared)}; computing in "
                f"{dtype_name(self.used)} ({self.reason})")


def choose_dtype(declared: torch.dtype | None, device: str | torch.device,
                 requested: str | torch.dtype | None = None) -> DtypeChoice:
    """The dtype to compute in: `requested` when given (not 'auto'); else the declared one,
    except half precision on a CPU where its matmul is slower than float32."""
    declared = declared or torch.float32
    if requested is not None and requested != "auto":
        used = resolve_dtype(requested)
        return DtypeChoice(declared, used, "" if used == declared else "set in the config")
    if declared in HALF and torch.device(device).type == "cpu":
        slowdown = half_matmul_slowdown(declared)
        if slowdown > 1.0:
            return DtypeChoice(declared, torch.float32,
                               f"{_short(declared)} matmul {slowdown:.0f}x slower than float32 "
                               "on this CPU")
    return DtypeChoice(declared, declared)


def half_matmul_slowdown(dtype: torch.dtype) -> float:
    """Time of a half-precision CPU matmul over the same float32 matmul (< 1: half is faster)."""
    forced = os.environ.get(HALF_MATMUL_ENV, "").strip().lower()
    if forced in ("fast", "slow"):
        return 0.5 if forced == "fast" else 50.0
    if forced:
        raise FaithcaseError(f"{HALF_MATMUL_ENV}={forced!r}: use fast or slow (or unset it)")
    return _measured_slowdown(dtype, torch.get_num_threads())


@lru_cache(maxsize=None)
def _measured_slowdown(dtype: torch.dtype, threads: int) -> float:
    """Measured once per machine: kept in the faithcase cache folder under a key of the CPU, torch
    and its kernel settings, so every process on the machine (a loaded one too) decides alike."""
    key = f"{dtype_name(dtype)}|{threads}|{_machine_key()}"
    known = _read_verdicts()
    if isinstance(known.get(key), (int, float)):
        return float(known[key])
    rows, d_in, d_out = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_in, generator=generator)
    w = torch.randn(d_in, d_out, generator=generator)
    half, full = (x.to(dtype), w.to(dtype)), (x, w)
    best = {"half": float("inf"), "full": float("inf")}
    for _ in range(PROBE_REPEATS):  # interleaved, so a busy moment slows both alike
        best["half"] = min(best["half"], _time(*half))
        best["full"] = min(best["full"], _time(*full))
    slowdown = best["half"] / max(best["full"], 1e-9)
    _write_verdict(key, slowdown)
    return slowdown


def _time(x: torch.Tensor, w: torch.Tensor) -> float:
    x @ w  # warm-up: kernel selection, allocation
    start = time.perf_counter()
    x @ w
    return time.perf_counter() - start


def _machine_key() -> str:
    """The CPU (model and flags), torch, and the settings that cap its kernels."""
    import hashlib
    import platform

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = platform.processor()
    lines = sorted({line for line in cpuinfo.splitlines()
                    if line.startswith(("model name", "flags", "Features", "CPU part"))})
    parts = [*lines, torch.__version__, torch.backends.cpu.get_cpu_capability(),
             *(f"{name}={os.environ.get(name, '')}" for name in KERNEL_ENV)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _verdicts_file() -> Path:
    return cache_dir() / "half-matmul.json"


def _read_verdicts() -> dict:
    try:
        data = json.loads(_verdicts_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_verdict(key: str, slowdown: float) -> None:
    """Best effort: a folder that cannot be written only means measuring again next time."""
    path = _verdicts_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(_read_verdicts() | {key: slowdown}, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def _short(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, dtype_name(dtype))


def policy_key(device: str | torch.device) -> dict[str, str]:
    """What `choose_dtype` decides for a declared dtype on `device`, for fingerprints: a run
    folder moved to a machine that decides otherwise recomputes."""
    if torch.device(device).type != "cpu":
        return {"half": "declared"}
    return {dtype_name(d): "fast" if half_matmul_slowdown(d) <= 1.0 else "slow" for d in HALF}
