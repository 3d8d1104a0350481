"""The accuracy price of the fast paths, measured on the parity scenarios' clip and model (real
masks: the object-score head leans to "present"): embeddings kept on disk in float16, and the
network in bf16 (where the CPU computes it natively; elsewhere it must be refused).

Thresholds: mean mask IoU >= 0.999 for the float16 store; for bf16, max |dlogit| <= 0.02, pixel
agreement >= 99 % and mean IoU >= 0.95, from measurements with weights converted once (an
AVX512-BF16 CPU, 32 frames: |dlogit| 6.6e-3 and 7.2e-3, pixels 99.53 % and 99.52 %, IoU 0.967
and 0.968 for one and two objects). Random weights leave much of a mask's area with logits
close to 0, where a change of 0.01 flips pixels: the logit difference is the telling figure
(the figures printed are in docs/troubleshooting.md#speed).
"""

from __future__ import annotations

import numpy as np
import pytest

import napari_sam2 as ns
from napari_sam2.model import native_bf16_cpu

H, W = 96, 128


def clip(t: int) -> np.ndarray:
    """The parity tests' two moving blobs, ``t`` frames, uint8 RGB after a JPEG round trip."""
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:H, :W]
    frames = []
    for i in range(t):
        img = rng.integers(0, 60, (H, W, 3)).astype(np.uint8)
        img[(rr - 40 - i % 10) ** 2 + (cc - 40 - 2 * (i % 10)) ** 2 < 14**2] += 150
        img[(rr - 70) ** 2 + (cc - 100 + i % 10) ** 2 < 10**2] += 100
        frames.append(img)
    return np.stack(frames)


@pytest.fixture(scope="module")
def model():
    from official import random_tiny

    return random_tiny(256, seed=0, object_bias=1.0)


SCENARIOS = {
    "click": lambda t: t.add_prompt(0, 1, points=[(40, 40)], labels=[1]),
    "box": lambda t: t.add_prompt(0, 1, box=(28, 30, 58, 60)),
    "two_objects": lambda t: (
        t.add_prompt(0, 1, points=[(40, 40), (10, 10)], labels=[1, 0]),
        t.add_prompt(0, 2, box=(58, 88, 82, 112)),
    ),
    "mask": lambda t: t.add_prompt(0, 1, mask=clip(1)[0, :, :, 0] > 140),
}


def track(model, frames, scenario, **kwargs) -> np.ndarray:
    tracker = ns.VideoTracker(model, frames, feature_cache=1, **kwargs)
    SCENARIOS[scenario](tracker)
    logits = np.stack([r.logits for r in tracker.propagate()])
    tracker.close()
    return logits


def agreement(exact: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """(pixel agreement, mean IoU over frames and objects with a mask, max |dlogit|)."""
    a, b = exact > 0, other > 0
    union = (a | b).sum(axis=(2, 3))
    iou = ((a & b).sum(axis=(2, 3)) / np.maximum(union, 1))[union > 0]
    return float((a == b).mean()), float(iou.mean()), float(np.abs(exact - other).max())


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_float16_embeddings_store_agrees(model, tmp_path, scenario):
    frames = clip(10)
    store = tmp_path / "half.zarr"
    ns.VideoTracker(model, frames, embeddings=store).precompute()  # every frame from disk
    exact = track(model, frames, scenario, embeddings=False)
    pixels, iou, dlogit = agreement(exact, track(model, frames, scenario, embeddings=store))
    print(f"float16 store, {scenario}: pixels {pixels:.5f}, IoU {iou:.5f}, |dlogit| {dlogit:.1e}")
    assert (exact > 0).any(axis=(2, 3)).mean() > 0.5  # real masks are compared
    assert iou >= 0.999


def test_bf16_agrees_where_the_cpu_computes_it(model):
    if not native_bf16_cpu():
        with pytest.raises(ns.PrecisionError, match="no native bf16"):
            model.set_precision("bf16")
        assert model.set_precision("auto").precision == "fp32"
        return
    frames = clip(32)
    results = {}
    for scenario in ("click", "two_objects"):
        exact = track(model, frames, scenario, embeddings=False)
        model.set_precision("bf16")
        try:
            fast = track(model, frames, scenario, embeddings=False)
        finally:
            model.set_precision("fp32")
        results[scenario] = agreement(exact, fast)
        pixels, iou, dlogit = results[scenario]
        print(f"bf16, 32 frames, {scenario}: pixels {pixels:.5f}, IoU {iou:.5f}, ", end="")
        print(f"|dlogit| {dlogit:.1e}")
    for pixels, iou, dlogit in results.values():
        assert dlogit <= 0.02 and pixels >= 0.99 and iou >= 0.95
