"""Reduced precision: which number formats a device computes fast, and how the model uses them.

``fp32`` is exact (the parity tests hold it to Meta's code). ``bf16`` and ``fp16`` run the
network's large products — the image encoder, the memory attention, the memory encoder and the
mask decoder's transformer and upscaling — with weights converted once, when the precision is
set (:class:`Linear`, :class:`Conv2d`, :class:`ConvTranspose2d`: the fp32 parameters stay the
master copy, for the state dict, training and the way back to fp32). Products accumulate in
fp32 inside the kernels; the residual streams, layer norms and softmax reductions, position
encodings, the heads that make the mask logits, IoU and object scores, and the object pointers
stay fp32. This trades a little accuracy for speed where the hardware computes them natively:

- CUDA: bf16 (Ampere and later) or fp16;
- CPU: bf16 only with native support (AVX512-BF16 or AMX). On a CPU without it a bf16 matrix
  product is emulated, hundreds of times slower than fp32, so it is refused; fp16 is refused on
  every CPU for the same reason;
- Apple MPS: fp16.

``auto`` picks bf16 on CUDA (fp16 where bf16 is missing), bf16 on a CPU that has it natively and
fp32 on other CPUs, fp16 on MPS.
"""

from __future__ import annotations

import functools
import platform
import sys

import torch
import torch.nn.functional as F
from torch import nn

from .products import cpu_flags, linear

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """A precision this device cannot compute (fast), with what to choose instead."""


@functools.lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX on x86; BF16 on Arm)."""
    if sys.platform.startswith("linux"):
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})
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


class CastOnce:
    """For the layers below: with ``compute_dtype`` set (bf16, fp16) the layer multiplies in that
    dtype with a copy of its weights made once, and made again only when the parameters change
    (an optimiser step, ``load_state_dict``, a move to another device: the copy is keyed by
    their version counters and storage). With ``compute_dtype`` None it is the torch layer,
    bit for bit. The input is cast to the dtype the layer computes in, so a layer kept in fp32
    accepts the reduced output of the layer before it. (An edit through ``weight.data`` bumps
    no version counter: call ``set_precision`` again after one.)"""

    compute_dtype: torch.dtype | None = None
    _copy: tuple | None = None

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        self.compute_dtype = None if dtype == torch.float32 else dtype
        self._copy = None
        if self.compute_dtype is not None:
            with torch.no_grad():
                self.weights()  # converted now, not on the first call

    def weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) in the dtype this layer computes in."""
        w, b = self.weight, self.bias
        dtype = self.compute_dtype
        if dtype is None or dtype == w.dtype:
            return w, b
        if torch.is_grad_enabled() and (w.requires_grad or (b is not None and b.requires_grad)):
            # Training this layer: cast on every call, so that gradients reach the fp32 weights.
            return w.to(dtype), None if b is None else b.to(dtype)
        key = (dtype, w.device, w.data_ptr(), w._version, None if b is None else b._version)
        if self._copy is None or self._copy[0] != key:
            with torch.no_grad():
                self._copy = (key, w.to(dtype), None if b is None else b.to(dtype))
        return self._copy[1], self._copy[2]

    def compute_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.compute_dtype or self.weight.dtype)


class Linear(CastOnce, nn.Linear):
    """``nn.Linear`` that computes in its ``compute_dtype`` (:class:`CastOnce`); large fp32
    products on an x86 CPU go through oneDNN (:mod:`.products`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.compute_input(x), *self.weights())


class Conv2d(CastOnce, nn.Conv2d):
    """``nn.Conv2d`` that computes in its ``compute_dtype`` (:class:`CastOnce`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.compute_input(x), *self.weights())


class ConvTranspose2d(CastOnce, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (no ``output_size``) that computes in its ``compute_dtype``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weights()
        return F.conv_transpose2d(
            self.compute_input(x),
            w,
            b,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


def set_compute_dtype(module: nn.Module, dtype: torch.dtype | None) -> None:
    """Every :class:`CastOnce` layer inside ``module`` computes in ``dtype`` (None: its own)."""
    for layer in module.modules():
        if isinstance(layer, CastOnce):
            layer.set_compute_dtype(dtype)
