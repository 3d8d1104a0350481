"""Reduced precision: which number formats a device computes fast, and how the model uses them.

``fp32`` is exact (the parity tests hold it to Meta's code). ``bf16`` and ``fp16`` run the
network's matrix products and convolutions under ``torch.autocast`` — products accumulate in
fp32, normalisations and the attention's softmax stay in fp32, and the mask logits, scores and
object pointers the model returns are fp32 — and trade a little accuracy for speed where the
hardware computes them natively:

- CUDA: bf16 (Ampere and later) or fp16;
- CPU: bf16 only with native support (AVX512-BF16 or AMX). On a CPU without it a bf16 matrix
  product is emulated, hundreds of times slower than fp32, so it is refused; fp16 is refused on
  every CPU for the same reason;
- Apple MPS: fp16.

``auto`` picks bf16 on CUDA (fp16 where bf16 is missing), bf16 on a CPU that has it natively and
fp32 on other CPUs, fp16 on MPS.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import sys
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """A precision this device cannot compute (fast), with what to choose instead."""


@functools.lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX on x86; BF16 on Arm)."""
    if sys.platform.startswith("linux"):
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        flags = set()
        for line in text.splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if sys.platform == "darwin" and platform.machine() == "arm64":
        import subprocess

        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return False
        return out == "1"
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` for ``device`` as one of fp32, bf16, fp16 (``auto`` chosen); raises
    :class:`PrecisionError` for a precision the device cannot compute fast."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = device.type
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if kind == "mps":
            return "fp16"
        return "bf16" if kind == "cpu" and native_bf16_cpu() else "fp32"
    if precision == "fp32":
        return precision
    if kind == "cpu":
        if precision == "fp16":
            raise PrecisionError(
                "fp16 is not computed natively by CPUs (an fp16 matrix product runs hundreds of "
                "times slower than fp32 there); use precision='bf16' on a CPU with AVX512-BF16 "
                "or AMX, or fp32"
            )
        if not native_bf16_cpu():
            raise PrecisionError(
                "this CPU has no native bf16 (AVX512-BF16 or AMX): a bf16 matrix product would "
                "be emulated, hundreds of times slower than fp32; use precision='fp32' (or "
                "'auto', which picks fp32 here)"
            )
    if kind == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise PrecisionError("this GPU has no bf16 (it needs Ampere or later); use 'fp16'")
    if kind == "mps" and precision == "bf16":
        raise PrecisionError("Apple MPS computes fp16, not bf16: use precision='fp16'")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
