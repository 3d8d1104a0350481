"""Training really trains the network Meta's code runs, and saves it right: decoder-only
training (lr 1e-3) on two small synthetic images with one labelled object each, at input 256,
from random weights, takes the one-click IoU of those objects from < 0.1 to >= 0.8, measured by
loading the saved file into Meta's ``build_sam2`` and ``SAM2ImagePredictor``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from official import config_file, randomize_, save_checkpoint
from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor

import napari_sam2 as ns
from napari_sam2.model import CONFIGS, SAM2Model

SIZE = 256
OBJECTS = [(70, 90, 22), (110, 60, 26)]  # (row, col, radius), one per 180 x 180 image


def _images():
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:180, :180]
    images, labels = [], []
    for r, c, radius in OBJECTS:
        image = rng.integers(0, 60, (180, 180), dtype=np.uint8)
        disc = (rr - r) ** 2 + (cc - c) ** 2 < radius**2
        image[disc] += 150
        images.append(image)
        labels.append(disc.astype(np.uint8))
    return images, labels


def _meta_one_click_iou(checkpoint, images, labels) -> float:
    """Meta's own predictor on the file: one click at each object's centre, best of three."""
    model = build_sam2(
        config_file("sam2.1_hiera_tiny"),
        ckpt_path=str(checkpoint),
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={SIZE}"],
    )
    predictor = SAM2ImagePredictor(model)
    # It hard-codes the feature sizes of a 1024 input.
    predictor._bb_feat_sizes = [(SIZE // 4, SIZE // 4), (SIZE // 8, SIZE // 8), (SIZE // 16,) * 2]
    ious = []
    for image, label, (r, c, _) in zip(images, labels, OBJECTS):
        predictor.set_image(np.repeat(image[..., None], 3, axis=2))
        masks, scores, _ = predictor.predict(
            point_coords=np.array([[c, r]], dtype=np.float32), point_labels=np.array([1])
        )
        best = masks[int(np.argmax(scores))].astype(bool)
        ious.append((best & (label > 0)).sum() / max((best | (label > 0)).sum(), 1))
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(SAM2Model(CONFIGS["sam2.1_hiera_tiny"]), seed=3)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_checkpoint(model, path)
    return path


def test_decoder_training_takes_one_click_iou_from_random_to_good(base_checkpoint, tmp_path):
    images, labels = _images()
    before = _meta_one_click_iou(base_checkpoint, images, labels)
    out = tmp_path / "trained.pt"
    report = ns.train(
        images,
        labels,
        out,
        checkpoint=base_checkpoint,
        image_size=SIZE,
        steps=60,
        lr=1e-3,
        train="decoder",
        val_fraction=0.0,
        val_every=1000,
        device="cpu",
    )
    after = _meta_one_click_iou(out, images, labels)
    print(
        f"one-click IoU (Meta's predictor): {before:.3f} -> {after:.3f}; ours "
        f"{report.val_before['one_click_iou']:.3f} -> {report.val_after['one_click_iou']:.3f}; "
        f"{report.seconds:.1f} s"
    )
    assert before < 0.1
    assert after >= 0.8
    assert report.steps == 60 and len(report.losses) == 60
    assert np.mean(report.losses[-10:]) < np.mean(report.losses[:10])
    # Exactly Meta's keys (build_sam2 above loads strictly), and only the decoder changed.
    base = torch.load(base_checkpoint, weights_only=True)["model"]
    trained = torch.load(out, weights_only=True)["model"]
    assert set(base) == set(trained)
    changed = {k.split(".")[0] for k in base if not torch.equal(base[k], trained[k])}
    assert changed == {"sam_mask_decoder", "sam_prompt_encoder"}
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["image_size"] == SIZE and sidecar["steps"] == 60
    assert sidecar["validation"]["after"]["one_click_iou"] == report.val_after["one_click_iou"]
    # Loading honours the recorded input size.
    assert ns.load_model("sam2.1_hiera_tiny", out, device="cpu").config.image_size == SIZE
