"""The fp32 products through oneDNN (napari_sam2.model.products): what they compute, where they
are used and where they are not (small products, gradients, torch.compile, the switch)."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from napari_sam2.model import CONFIGS, SAM2Model, products

X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture
def calls(monkeypatch):
    """The oneDNN calls made, as (rows, K, N)."""
    seen: list[tuple[int, int, int]] = []
    real = products.onednn_linear

    def spy(x, weight, bias):
        seen.append((x.numel() // x.shape[-1], *weight.shape[::-1]))
        return real(x, weight, bias)

    monkeypatch.setattr(products, "onednn_linear", spy)
    monkeypatch.delenv(products.ENV, raising=False)
    return seen


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_on_by_default_on_x86_and_switched_by_the_environment(monkeypatch):
    monkeypatch.delenv(products.ENV, raising=False)
    assert products.onednn_available(), "torch was built without oneDNN: the CPU path is untested"
    assert products.cpu_products() == ("onednn" if X86 else "torch")
    monkeypatch.setenv(products.ENV, "torch")
    assert products.cpu_products() == "torch"
    monkeypatch.setenv(products.ENV, "onednn")
    assert products.cpu_products() == "onednn"
    monkeypatch.setenv(products.ENV, "mkl")
    with pytest.raises(ValueError, match="NAPARI_SAM2_CPU_PRODUCTS must be one of onednn, torch"):
        products.cpu_products()


def test_a_large_linear_is_fp32_through_onednn(calls, monkeypatch):
    monkeypatch.setenv(products.ENV, "onednn")
    x, w, b = _randn(3, 700, 384), _randn(1536, 384, seed=1), _randn(1536, seed=2)
    exact = F.linear(x.double(), w.double(), b.double())
    ours = products.linear(x, w, b)
    assert calls == [(2100, 384, 1536)]
    assert ours.shape == (3, 700, 1536) and ours.dtype == torch.float32
    # fp32 rounding: as far from the float64 result as torch's own fp32 product, give or take
    torch_error = (F.linear(x, w, b).double() - exact).abs().max().item()
    assert (ours.double() - exact).abs().max().item() < 10 * torch_error + 1e-5
    # a transposed weight (the attention's values) and rows with a stride (a slice)
    wide = _randn(700, 2 * 384, seed=3)[:, :384]
    assert torch.allclose(
        products.linear(wide, w.t().contiguous().t()), F.linear(wide, w), atol=1e-3
    )
    assert calls[1:] == [(700, 384, 1536)]


def test_small_products_gradients_and_the_switch_stay_with_torch(calls, monkeypatch):
    x, w = _randn(8, 256), _randn(256, 256, seed=1)
    assert torch.equal(products.linear(x, w), F.linear(x, w))  # 0.5 M multiply-adds
    big, wb = _randn(4096, 256), _randn(256, 256, seed=1)
    monkeypatch.setenv(products.ENV, "torch")
    assert torch.equal(products.linear(big, wb), F.linear(big, wb))
    monkeypatch.setenv(products.ENV, "onednn")
    wb.requires_grad_(True)
    out = products.linear(big, wb)
    out.sum().backward()  # autograd goes through torch's product
    assert torch.allclose(wb.grad, big.sum(0).expand(256, -1), rtol=1e-4, atol=1e-3)
    # a weight in another layout than dense or transposed-dense would meet oneDNN's slow
    # reference code: torch takes it
    odd = _randn(256, 512, seed=4)[:, ::2]
    assert torch.equal(products.linear(big, odd), F.linear(big, odd))
    assert calls == []


@pytest.mark.parametrize("shape", [(1, 4, 512, 96), (2, 1, 300, 256)])
def test_attention_matches_torch_fused_kernel(shape, calls, monkeypatch):
    monkeypatch.setenv(products.ENV, "onednn")
    b, h, n, d = shape
    # q, k, v as the image encoder makes them: heads of one (B, N, 3, h, d) projection
    qkv = _randn(b, n, 3, h, d).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in qkv)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    got = products.attention(q, k, v)
    assert len(calls) == 2 * b * h  # scores and weighted values, per batch row and head
    assert (got.double() - expected).abs().max().item() < 1e-5


def test_blocked_attention_with_padded_keys_matches_torch(calls, monkeypatch):
    """The memory attention's case: a batch of objects, one of them with fewer memories."""
    monkeypatch.setenv(products.ENV, "onednn")
    q, k, v = (
        _randn(2, 1, 256, 256),
        _randn(2, 1, 1200, 256, seed=1),
        _randn(2, 1, 1200, 64, seed=2),
    )
    mask = torch.ones(2, 1, 1, 1200, dtype=torch.bool)
    mask[1, ..., 900:] = False
    scores = (q.double() @ k.double().transpose(-1, -2)) / 16.0
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v.double()
    got = products.blocked_attention(q, k, v, mask)
    assert calls and (got.double() - expected).abs().max().item() < 1e-5
    monkeypatch.setenv(products.ENV, "torch")  # the blocked attention with torch's products
    assert (products.blocked_attention(q, k, v, mask).double() - expected).abs().max() < 1e-5


def test_the_network_runs_its_large_products_through_onednn_and_agrees_with_torch(
    calls, monkeypatch
):
    """One image through the encoder, both ways: the products are oneDNN's unless switched
    off, and the embeddings agree to float rounding (the parity tests hold both to Meta's)."""
    torch.manual_seed(0)
    model = SAM2Model(CONFIGS["sam2.1_hiera_tiny"].with_image_size(256)).eval()
    image = _randn(1, 3, 256, 256)
    with torch.no_grad():
        fast = model.encode_image(image)
        assert len(calls) > 20
        monkeypatch.setenv(products.ENV, "torch")
        count = len(calls)
        plain = model.encode_image(image)
        assert len(calls) == count
    pairs = [(fast.features, plain.features), *zip(fast.high_res, plain.high_res)]
    for a, b in pairs:
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
        assert not torch.equal(a, b)  # the two really are different kernels


@pytest.fixture
def fused(monkeypatch):
    """The calls of torch's fused attention kernel."""
    seen: list[tuple] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append(tuple(q.shape))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    monkeypatch.delenv(products.ENV, raising=False)
    return seen


def _error(got, exact):
    diff = (got.double() - exact).abs()
    return diff.mean().item(), diff.max().item()


@pytest.mark.parametrize("shape", [(256, 1, 64, 96), (1, 4, 1024, 96)])
def test_bf16_attention_is_blocked_on_a_cpu_without_amx(shape, fused, monkeypatch):
    """The encoder's windows (many small heads: one batched product per block) and a global
    block, in bf16: as close to the exact result as bf16 allows (its scores are rounded to
    bf16 before the softmax: about twice the fused kernel's mean error, measured)."""
    b, h, n, d = shape
    q, k, v = (t.transpose(1, 2).bfloat16() for t in _randn(b, n, 3, h, d).unbind(2))
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    fused.clear()
    got = products.attention(q, k, v)
    assert got.dtype == torch.bfloat16
    if not products.bf16_blocks_pay():  # AMX, or no AVX512-BF16: torch's fused kernel
        assert fused == [shape]
        return
    assert fused == []
    reference = F.scaled_dot_product_attention(q, k, v)
    (mean, worst), (fused_mean, fused_worst) = _error(got, exact), _error(reference, exact)
    assert mean < 3 * fused_mean and worst < 5 * fused_worst
    monkeypatch.setenv(products.ENV, "torch")  # the switch gives torch's fused kernel back
    assert torch.equal(products.attention(q, k, v), reference)


def test_bf16_blocked_attention_with_padded_keys(fused, monkeypatch):
    """The memory attention in bf16: objects batched, one with fewer memories; blocks of
    several objects and blocks of part of one object's queries agree."""
    q, k, v = (
        _randn(3, 1, 256, 256).bfloat16(),
        _randn(3, 1, 1200, 256, seed=1).bfloat16(),
        _randn(3, 1, 1200, 64, seed=2).bfloat16(),
    )
    mask = torch.ones(3, 1, 1, 1200, dtype=torch.bool)
    mask[1, ..., 900:] = False
    scores = (q.double() @ k.double().transpose(-1, -2)) / 16.0
    exact = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v.double()
    whole = products.blocked_attention(q, k, v, mask)
    monkeypatch.setattr(products, "REDUCED_BLOCK_BYTES", 2**16)  # 27 queries' scores a block
    parts = products.blocked_attention(q, k, v, mask)
    for got in (whole, parts):
        assert got.dtype == torch.bfloat16
        mean, worst = _error(got, exact)
        assert mean < 2e-3 and worst < 2e-2, (mean, worst)
    if products.bf16_blocks_pay():
        assert torch.allclose(whole.float(), parts.float(), atol=1e-2)
    assert fused == []  # the memory attention never used the fused kernel
