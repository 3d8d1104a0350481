"""Reduced precision and compilation: chosen per device, refused where they would be slow, and
giving what fp32 gives (within the price documented). Real networks with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_sam2 as ns
from napari_sam2.model import PrecisionError, native_bf16_cpu
from napari_sam2.model.precision import resolve_precision

CPU = torch.device("cpu")


def test_fp16_is_refused_on_every_cpu():
    with pytest.raises(PrecisionError, match=r"fp16 is not computed natively by CPUs.*bf16"):
        resolve_precision("fp16", CPU)


def test_bf16_on_the_cpu_only_where_it_is_native():
    if native_bf16_cpu():
        assert resolve_precision("bf16", CPU) == "bf16" == resolve_precision("auto", CPU)
    else:
        with pytest.raises(PrecisionError, match="no native bf16.*emulated"):
            resolve_precision("bf16", CPU)
        assert resolve_precision("auto", CPU) == "fp32"


def test_an_unknown_precision_is_named():
    with pytest.raises(PrecisionError, match=r"one of fp32, bf16, fp16, auto, got 'half'"):
        resolve_precision("half", CPU)


def test_a_bad_precision_fails_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(PrecisionError):
        ns.load_model("sam2.1_hiera_tiny", tmp_path / "never-read.pt", "cpu", precision="fp16")


def test_reduced_precision_returns_fp32_logits_close_to_fp32(mini_model, gray16):
    p = ns.ImagePredictor(mini_model)
    p.set_image(gray16)
    exact = p.predict(points=[(40, 60)], labels=[1])
    precision = resolve_precision("auto", CPU)
    try:
        mini_model.set_precision(precision)
        p.set_image(gray16)
        fast = p.predict(points=[(40, 60)], labels=[1])
    finally:
        mini_model.set_precision("fp32")
    assert fast.logits.dtype == np.float32 and fast.scores.dtype == np.float32
    tolerance = 0.0 if precision == "fp32" else 0.2
    assert np.abs(fast.logits - exact.logits).max() <= tolerance


def test_compiled_parts_give_the_eager_result_and_keep_parameter_names():
    from official import random_tiny

    model = random_tiny(128, seed=2, object_bias=1.0)
    names = list(model.state_dict())
    frames = np.random.default_rng(0).integers(0, 255, (4, 40, 56)).astype(np.uint8)

    def track():
        t = ns.VideoTracker(model, frames, embeddings=False)
        t.add_prompt(0, 1, points=[(15, 20)], labels=[1])
        t.add_prompt(0, 2, points=[(30, 40)], labels=[1])
        return np.stack([r.logits for r in t.propagate()])

    eager = track()
    model.compile_parts()
    assert model.compiled and list(model.state_dict()) == names
    np.testing.assert_allclose(track(), eager, atol=1e-4)
