"""The network's large fp32 products on x86 CPUs, through oneDNN.

torch multiplies fp32 matrices on the CPU with MKL's sgemm, which picks its kernels by CPU
vendor: on an AMD EPYC with AVX-512 (2 cores), torch's ``F.linear`` ran at 150-215 GFLOP/s
while oneDNN — the library torch itself uses for convolutions, and for bf16 products — ran the
same products at 340-480 GFLOP/s (2.2-2.4x; ``benchmarks/speed_benchmark.py`` prints
both rates). Meta's code runs on MKL like any torch model. Here the linear layers
(:class:`~napari_sam2.model.precision.Linear`) and the attention of the image encoder's global
blocks and of the memory attention (:func:`attention`, :func:`blocked_attention`) call
oneDNN's fp32 inner product instead, through torch's own operator
(``torch.ops.mkldnn._linear_pointwise``, the one torch.compile emits for CPU linears).

The results are fp32 products (IEEE single precision, fp32 accumulation; no reduced-precision
mode is involved) summed in another order, so they differ from torch's by float rounding:
a few millionths of a product's size, as two fp32 summation orders do. The parity tests hold the
whole network to Meta's code with this path on.

Only where it pays and where nothing else is needed: a CPU tensor in fp32, at least
:data:`MIN_MACS` multiply-adds (below that, oneDNN's per-call set-up costs more than it saves),
and no gradient to compute (training goes through torch's products, which autograd knows),
and not inside ``torch.compile`` (which picks its own kernels).

In bf16 on a CPU without AMX (AVX512-BF16 only, e.g. AMD EPYC), the attention goes the same
blocked way, its products in bf16 (torch's matmul, which runs oneDNN's AVX512-BF16 kernels at
the bf16 rate): torch's fused bf16 kernel ran at 75-205 GFLOP/s there, the blocks at 190-710
(2.3-4.7x; encoder windows and global blocks, the memory's self- and cross-attention). Its
scores are rounded to bf16 before the softmax (the fused kernel keeps them in fp32), which
about doubles the mean error of a bf16 attention output (still well inside bf16's precision;
the bf16 agreement tests hold the tracker to fp32). On a CPU with AMX the fused kernel runs
AMX tiles and is faster than bf16 matmul (408 against 310 GFLOP/s, measured on a Xeon): it is
kept there, as on CUDA.

``NAPARI_SAM2_CPU_PRODUCTS=torch`` turns both off (``onednn``, the default on x86-64, turns it
on); the choice is read at every call, so that a test or a benchmark can compare both.
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F

ENV = "NAPARI_SAM2_CPU_PRODUCTS"
CHOICES = ("onednn", "torch")
MIN_MACS = 1 << 22  # a 4096 x 32 x 32 product: the measured break-even is about 2-4 million
# Blocks of attention scores that stay in a CPU's L3 cache: the fastest of 1 to 32 MiB, for
# torch's products (the memory attention at 1024²) and for oneDNN's (every attention here).
TORCH_BLOCK_BYTES = 16 * 2**20
ONEDNN_BLOCK_BYTES = 8 * 2**20
REDUCED_BLOCK_BYTES = 16 * 2**20  # bf16 blocks: 16 MiB beat 2-8 on the memory's cross-attention


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo`` on Linux; empty elsewhere)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(flags)


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """Whether this torch build has oneDNN and its fused linear operator, and the operator
    computes a small product as torch does (checked once: the operator is torch's internal
    one, so a torch release that changed it falls back to torch's products)."""
    try:
        if not (
            torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        ):
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=g) for s in ((5, 3, 16), (8, 16), (8,)))
        with torch.no_grad():
            got = onednn_linear(x, w, b)
        return got.shape == (5, 3, 8) and torch.allclose(got, F.linear(x, w, b), atol=1e-5)
    except (AttributeError, RuntimeError, TypeError):
        return False


def cpu_products() -> str:
    """Which library multiplies fp32 on the CPU: ``onednn`` or ``torch`` (its MKL or BLAS)."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice and choice not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "torch" or not onednn_available():
        return "torch"
    if choice == "onednn":
        return "onednn"
    return "onednn" if platform.machine().lower() in ("x86_64", "amd64") else "torch"


def _ours(x: torch.Tensor, w: torch.Tensor, macs: int, dtype, *extra) -> bool:
    """Whether a product of ``macs`` multiply-adds of ``x`` and ``w`` in ``dtype`` goes our way."""
    if x.device.type != "cpu" or x.dtype != dtype or w.dtype != dtype:
        return False
    if macs < MIN_MACS:
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, *extra)):
        return False
    if torch.compiler.is_compiling():  # torch.compile chooses its own kernels
        return False
    return cpu_products() == "onednn"


def _onednn(x: torch.Tensor, w: torch.Tensor, macs: int, *extra) -> bool:
    return _ours(x, w, macs, torch.float32, *extra)


def bf16_blocks_pay() -> bool:
    """Whether this CPU multiplies bf16 with AVX512-BF16 and has no AMX: there, blocked bf16
    products beat torch's fused bf16 attention kernel (measured on an AMD EPYC)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags and "amx_bf16" not in flags


def _bf16_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    b, h, n, d = q.shape
    macs = b * h * n * k.shape[-2] * d
    return _ours(q, k, macs, torch.bfloat16, v) and bf16_blocks_pay()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x (..., K), weight (N, K), bias (N,) or None."""
    n, k = weight.shape
    # oneDNN takes rows of x with any stride but a weight only dense or transposed-dense (any
    # other layout falls to its reference code, a thousand times slower).
    dense = weight.is_contiguous() or weight.t().is_contiguous()
    if dense and x.stride(-1) == 1 and _onednn(x, weight, (x.numel() // max(k, 1)) * k * n, bias):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def onednn_linear(x, weight, bias=None) -> torch.Tensor:
    """``F.linear`` computed by oneDNN, unconditionally (:func:`linear` decides when)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _blocked(q, k, v, key_mask, block_bytes: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v a block of scores of at most ``block_bytes`` at a time: one
    (batch, head) and one block of queries at a time where a block holds at most one (batch,
    head)'s scores (products through :func:`linear`: oneDNN's in fp32), several whole (batch,
    head) pairs at a time in one batched product where it holds more (the encoder's windows, in
    bf16; an fp32 batched product would be MKL's)."""
    b, h, n, d = q.shape
    nk = k.shape[-2]
    rows = block_bytes // max(nk * q.element_size(), 1)
    out = q.new_empty(b, h, n, v.shape[-1])
    q = q * d**-0.5
    if rows >= n and b * h > 1 and q.dtype != torch.float32:
        return _grouped(q, k, v, key_mask, max(1, rows // n), out)
    chunk = max(32, min(n, rows))
    for i in range(b):
        mask = None if key_mask is None else key_mask[min(i, key_mask.shape[0] - 1)].reshape(nk)
        for j in range(h):
            keys, values_t = k[i, j].contiguous(), v[i, j].contiguous().t()
            for s in range(0, n, chunk):
                scores = linear(q[i, j, s : s + chunk], keys)
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf"))
                out[i, j, s : s + chunk] = linear(torch.softmax(scores, dim=-1), values_t)
    return out


def _grouped(q, k, v, key_mask, groups: int, out) -> torch.Tensor:
    """:func:`_blocked` for scaled queries, ``groups`` (batch, head) pairs per product."""
    b, h, n, d = q.shape
    nk, dv = k.shape[-2], v.shape[-1]
    q, k, v = q.reshape(b * h, n, d), k.reshape(b * h, nk, d), v.reshape(b * h, nk, dv)
    flat = out.view(b * h, n, dv)
    if key_mask is not None:
        key_mask = key_mask.expand(b, h, 1, nk).reshape(b * h, 1, nk)
    for s in range(0, b * h, groups):
        scores = q[s : s + groups] @ k[s : s + groups].transpose(-1, -2)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[s : s + groups], float("-inf"))
        flat[s : s + groups] = torch.softmax(scores, dim=-1) @ v[s : s + groups]
    return out


def blocked_attention(q, k, v, key_mask=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, h, N, d) queries and keys and (B, h, Nk, dv) values,
    a block of queries at a time (a block of scores stays in cache); ``key_mask`` (B, 1, 1, Nk)
    bool marks the keys that take part. On the CPU with values narrower than the queries (the
    memory's 64 channels) this beats torch's fused kernel even with torch's products (which run
    best on wide values); with oneDNN's it beats it at every width."""
    b, h, n, d = q.shape
    if _onednn(q, k, n * k.shape[-2] * d, v):
        return _blocked(q, k, v, key_mask, ONEDNN_BLOCK_BYTES)
    if _bf16_blocks(q, k, v):
        return _blocked(q, k, v, key_mask, REDUCED_BLOCK_BYTES)
    scale = d**-0.5
    kt = k.transpose(-1, -2)
    per_query = k.shape[-2] * h * b * q.element_size()
    chunk = max(32, min(n, TORCH_BLOCK_BYTES // max(per_query, 1)))
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for s in range(0, n, chunk):
        scores = (q[..., s : s + chunk, :] * scale) @ kt
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, float("-inf"))
        # In bf16/fp16 the softmax still reduces in fp32 (torch's kernels do); only the
        # weights it returns are rounded, as the product with the values needs them.
        out[..., s : s + chunk, :] = torch.softmax(scores, dim=-1) @ v
    return out


def attention(q, k, v, key_mask=None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)`` for (B, h, N, d)
    tensors: blocked with oneDNN's products where they apply (large fp32 attention on the CPU:
    the image encoder's global blocks, 1.8x faster than the fused kernel, the memory
    attention's self-attention 1.9x; bf16 attention on a CPU without AMX, 2.3-4.7x), torch's
    fused kernel otherwise."""
    n, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if _onednn(q, k, n * nk * d, v):
        return _blocked(q, k, v, key_mask, ONEDNN_BLOCK_BYTES)
    if _bf16_blocks(q, k, v):
        return _blocked(q, k, v, key_mask, REDUCED_BLOCK_BYTES)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
