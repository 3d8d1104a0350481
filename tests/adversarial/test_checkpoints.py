"""Bad checkpoint files and devices: each refused with a clear error naming the file (or the
devices there are), before anything is built on it."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import napari_sam2 as ns
from napari_sam2.model import CONFIGS, SAM2Model

NAME = "sam2.1_hiera_tiny"
pytestmark = pytest.mark.refused


@pytest.fixture(scope="module")
def state():
    return SAM2Model(CONFIGS[NAME].with_image_size(128)).state_dict()


def load(path, device="cpu"):
    return ns.load_model(NAME, path, device, image_size=128)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(ns.CheckpointError, match=r"empty\.pt \(an empty file\).*Download it again"):
        load(path)


def test_truncated_file(tmp_path, state):
    full = tmp_path / "full.pt"
    torch.save({"model": state}, full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ns.CheckpointError, match=r"cut\.pt .*truncated, corrupt"):
        load(cut)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ns.CheckpointError, match=r"noise\.pt \(4,096 bytes\)"):
        load(path)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"model": "not a dict"}, r"'model' entry is a str, not a state dict"),
        (
            {"model": {1: torch.zeros(1)}},
            r"keys must be parameter names \(strings\), found \['1'\]",
        ),
        ({"model": {"a": [1, 2]}}, r"entries that are not tensors: \['a'\]"),
        ({"weights": {}}, r"expected a dict with a 'model' entry"),
        ([1, 2, 3], r"expected a dict with a 'model' entry.*found list"),
    ],
    ids=["model-not-a-dict", "non-string-keys", "non-tensor-values", "no-model-entry", "a-list"],
)
def test_not_the_official_format(tmp_path, payload, match):
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(ns.CheckpointError, match=match):
        load(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_named(tmp_path, state, bad):
    damaged = dict(state)
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    damaged[key] = damaged[key].clone()
    damaged[key][0, 0] = bad
    path = tmp_path / "damaged.pt"
    torch.save({"model": damaged}, path)
    with pytest.raises(
        ns.CheckpointError, match=rf"NaN or infinite values in 1 tensor\(s\): {key}"
    ):
        load(path)


def test_another_configuration(tmp_path):
    small = SAM2Model(CONFIGS["sam2.1_hiera_small"].with_image_size(128)).state_dict()
    path = tmp_path / "small.pt"
    torch.save({"model": small}, path)
    with pytest.raises(ns.CheckpointError, match=r"looks like sam2\.1_hiera_small weights"):
        load(path)


class _Payload:
    """A pickle that would run code when loaded without ``weights_only``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_execute_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload(str(marker))}, f)
    with pytest.raises(ns.CheckpointError, match=r"evil\.pt"):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("gpu0", r"'gpu0' is not a device name; devices on this machine: cpu"),
        ("cuda", r"'cuda' is not available: this machine has no CUDA GPU.*devices on this machine"),
        ("cuda:3", r"'cuda:3' is not available"),
        ("mps", r"'mps' is not available: Apple MPS"),
        ("xla", r"'xla' is not supported \(use cpu, cuda or mps\)"),
    ],
)
def test_devices_this_machine_lacks(tmp_path, state, device, match):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.fail("this test describes a CPU-only machine (CI); run it there")
    path = tmp_path / "ok.pt"
    torch.save({"model": state}, path)
    with pytest.raises(ns.DeviceError, match=match):
        load(path, device)
