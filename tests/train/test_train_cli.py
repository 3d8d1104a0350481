"""``napari-sam2 train`` end to end on a small stack: exit codes, an output that appears only
when training ends (atomically, with its sidecar), interruption leaving a resumable state, and a
resumed run that computes exactly what an uninterrupted one does. LoRA adapters are merged into
plain weights that Meta's ``build_sam2`` loads strictly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from official import config_file
from sam2.build_sam import build_sam2

import napari_sam2 as ns
from napari_sam2.cli import main
from napari_sam2.train import state_path

pytestmark = pytest.mark.usefixtures("cli_env")
FAST = ["--image-size", "128", "--device", "cpu", "--quiet"]


@pytest.fixture
def stack(tmp_path):
    """3 frames of two moving discs, labelled 1 and 2, as .npy files."""
    rr, cc = np.mgrid[:64, :64]
    frames, labels = [], []
    for t in range(3):
        a = (rr - 20 - 2 * t) ** 2 + (cc - 20) ** 2 < 10**2
        b = (rr - 44) ** 2 + (cc - 40 - 2 * t) ** 2 < 12**2
        frames.append((30 + 120 * a + 180 * b).astype(np.uint16) * 10)
        labels.append((a * 1 + b * 2).astype(np.uint8))
    np.save(tmp_path / "cells.npy", np.stack(frames))
    np.save(tmp_path / "cells_labels.npy", np.stack(labels))
    return tmp_path / "cells.npy", tmp_path / "cells_labels.npy"


def _api(stack, out, ckpt, **kw):
    return ns.train(
        [stack[0]],
        [stack[1]],
        out,
        checkpoint=ckpt,
        image_size=128,
        steps=4,
        clip_frames=3,
        train="memory",
        val_fraction=0.5,
        val_every=2,
        device="cpu",
        **kw,
    )


def test_cli_trains_a_stack_and_writes_an_official_checkpoint(
    tmp_path, capsys, stack, random_tiny_checkpoint
):
    argv = [
        "train",
        stack[0],
        "--labels",
        stack[1],
        "-o",
        "t.pt",
        "--checkpoint",
        random_tiny_checkpoint,
        "--steps",
        "3",
        "--clip-frames",
        "3",
        "--train",
        "memory",
        "--val-fraction",
        "0.5",
        *FAST,
    ]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    sidecar = json.loads((tmp_path / "t.json").read_text())
    assert sidecar["train"] == "memory" and sidecar["image_size"] == 128
    assert sidecar["validation"]["after"]["tracking_iou"] is not None  # a clip was tracked
    assert len(sidecar["validation"]["objects"]) == 1  # one of the two objects held out
    assert not state_path(tmp_path / "t.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".json")) == [
        "t.json",
        "t.pt",
    ]  # no temporary left behind
    # An existing output needs --overwrite (exit 2); with it, it is replaced.
    assert main([str(a) for a in argv]) == 2
    assert main([str(a) for a in [*argv, "--overwrite"]]) == 0


def test_interrupted_run_resumes_to_the_same_result(
    tmp_path, capsys, stack, random_tiny_checkpoint
):
    whole = _api(stack, tmp_path / "whole.pt", random_tiny_checkpoint)

    def stop_at_2(step, steps, loss, val):
        if step == 2:
            raise KeyboardInterrupt

    out = tmp_path / "part.pt"
    with pytest.raises(KeyboardInterrupt):
        _api(stack, out, random_tiny_checkpoint, progress=stop_at_2)
    assert not out.exists() and state_path(out).exists()  # no half-written output
    # Not silently restarted: the state must be resumed or overwritten.
    argv = [
        "train",
        stack[0],
        "--labels",
        stack[1],
        "-o",
        out,
        "--checkpoint",
        random_tiny_checkpoint,
        "--steps",
        "4",
        "--clip-frames",
        "3",
        "--train",
        "memory",
        "--val-fraction",
        "0.5",
        *FAST,
    ]
    assert main([str(a) for a in argv]) == 2
    assert "--resume to continue" in capsys.readouterr().err
    resumed = _api(stack, out, random_tiny_checkpoint, resume=True)
    assert resumed.resumed_from == 2
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6)
    a = torch.load(out, weights_only=True)["model"]
    b = torch.load(tmp_path / "whole.pt", weights_only=True)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert not state_path(out).exists()


def test_lora_is_merged_into_plain_weights_meta_loads(tmp_path, stack, random_tiny_checkpoint):
    out = tmp_path / "lora.pt"
    ns.train(
        [stack[0]],
        [stack[1]],
        out,
        checkpoint=random_tiny_checkpoint,
        image_size=128,
        steps=2,
        clip_frames=2,
        train="decoder",
        lora=4,
        lr=1e-2,
        val_fraction=0.0,
        device="cpu",
    )
    base = torch.load(random_tiny_checkpoint, weights_only=True)["model"]
    trained = torch.load(out, weights_only=True)["model"]
    assert set(trained) == set(base)
    qkv = "image_encoder.trunk.blocks.0.attn.qkv.weight"
    assert not torch.equal(trained[qkv], base[qkv])  # the adapter changed the encoder
    assert torch.equal(
        trained["image_encoder.trunk.blocks.0.norm1.weight"],
        base["image_encoder.trunk.blocks.0.norm1.weight"],
    )  # nothing else in it
    build_sam2(config_file("sam2.1_hiera_tiny"), ckpt_path=str(out), device="cpu")  # strict


def test_weights_in_memory_train_as_their_file_does(tmp_path, stack, random_tiny_checkpoint):
    """The widget trains the model it is using: a state dict in memory is a base checkpoint
    like its file, with the same result, and the sidecar says where the weights came from."""
    from_file = _api(stack, tmp_path / "file.pt", random_tiny_checkpoint)
    state = torch.load(random_tiny_checkpoint, weights_only=True)["model"]
    in_memory = _api(stack, tmp_path / "memory.pt", state)
    assert in_memory.losses == pytest.approx(from_file.losses, rel=1e-6)
    sidecar = json.loads((tmp_path / "memory.json").read_text())
    assert sidecar["base_checkpoint"] == "weights given in memory"
    ns.load_model("sam2.1_hiera_tiny", checkpoint=tmp_path / "memory.pt", device="cpu")
