"""``napari-sam2 train`` (and ``ns.train``) against bad training data and options. Every input is
checked before the model loads: these runs name a checkpoint that does not exist, so a check
made too late would fail on the checkpoint (exit 1) instead of the input (exit 2); nothing is
written, changed or deleted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import snapshot

import napari_sam2 as ns
from napari_sam2.cli import main
from napari_sam2.io import InputError

refused = pytest.mark.refused
pytestmark = pytest.mark.usefixtures("cli_env")
FAST = ["--image-size", "128", "--device", "cpu", "--quiet", "--steps", "2"]
NO_MODEL = ["--checkpoint", "does-not-exist.pt"]


def _disc_image(h=60, w=80):
    rr, cc = np.mgrid[:h, :w]
    disc = (rr - 30) ** 2 + (cc - 40) ** 2 < 15**2
    image = (40 + 150 * disc).astype(np.uint8)
    return image, disc.astype(np.uint8)


@pytest.fixture
def pair(tmp_path):
    image, labels = _disc_image()
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    return tmp_path / "img.npy", tmp_path / "lab.npy"


def refuses(argv, capsys, root, match):
    before = snapshot(root)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err, err
    assert "Traceback" not in err
    assert snapshot(root) == before
    return err


@refused
def test_labels_of_another_shape(tmp_path, capsys, pair):
    np.save(tmp_path / "lab.npy", np.ones((60, 81), np.uint8))
    argv = ["train", pair[0], "--labels", pair[1], "-o", "out.pt", *NO_MODEL, *FAST]
    refuses(argv, capsys, tmp_path, "(1, 60, 81), which does not fit")


@refused
def test_no_object_at_all(tmp_path, capsys, pair):
    np.save(tmp_path / "lab.npy", np.zeros((60, 80), np.uint8))
    argv = ["train", pair[0], "--labels", pair[1], "-o", "out.pt", *NO_MODEL, *FAST]
    refuses(argv, capsys, tmp_path, "no object to learn from")


@refused
def test_objects_too_small_for_the_mask_resolution_are_named(tmp_path, capsys, pair):
    labels = np.load(pair[1])
    labels[2:4, 2:4] = 7  # 4 pixels of 60 x 80: 0.14 pixels of the 32 x 32 mask grid at 128
    np.save(tmp_path / "lab.npy", labels)
    argv = ["train", pair[0], "--labels", pair[1], "-o", "out.pt", *NO_MODEL, *FAST]
    err = refuses(argv, capsys, tmp_path, "too small for the model's mask resolution")
    assert "id 7 (4 px)" in err and "id 1" not in err


@refused
def test_nan_frames(tmp_path, capsys):
    image, labels = _disc_image()
    stack = np.stack([image, image, image]).astype(np.float32)
    stack[1, 5, 5] = np.nan
    np.save(tmp_path / "s.npy", stack)
    np.save(tmp_path / "s_lab.npy", np.stack([labels] * 3))
    argv = ["train", "s.npy", "--labels", "s_lab.npy", "-o", "out.pt", *NO_MODEL, *FAST]
    refuses(argv, capsys, tmp_path, "frame 1 holds NaN or infinite values")


@refused
def test_base_checkpoint_of_another_configuration(tmp_path, capsys, pair, random_tiny_checkpoint):
    state = torch.load(random_tiny_checkpoint, weights_only=True)["model"]
    sam2 = {
        k: v
        for k, v in state.items()
        if "no_obj_embed_spatial" not in k and "obj_ptr_tpos_proj" not in k
    }
    torch.save({"model": sam2}, tmp_path / "sam2_tiny.pt")
    argv = [
        "train",
        pair[0],
        "--labels",
        pair[1],
        "-o",
        "out.pt",
        "--checkpoint",
        "sam2_tiny.pt",
        *FAST,
    ]
    refuses(argv, capsys, tmp_path, "holds sam2_hiera_tiny, not sam2.1_hiera_tiny: pass --model")


@refused
def test_output_exists_without_overwrite(tmp_path, capsys, pair):
    (tmp_path / "out.pt").write_bytes(b"precious")
    argv = ["train", pair[0], "--labels", pair[1], "-o", "out.pt", *NO_MODEL, *FAST]
    refuses(argv, capsys, tmp_path, "out.pt exists: pass --overwrite")


@refused
def test_resume_without_a_state(tmp_path, capsys, pair):
    argv = ["train", pair[0], "--labels", pair[1], "-o", "out.pt", "--resume", *NO_MODEL, *FAST]
    refuses(argv, capsys, tmp_path, "nothing to resume")


@refused
def test_lora_with_all_and_labels_count(tmp_path, pair):
    image, labels = _disc_image()
    with pytest.raises(InputError, match="--lora takes a rank"):
        ns.train([image], [labels], tmp_path / "o.pt", train="all", lora=4, checkpoint="x.pt")
    with pytest.raises(InputError, match="2 stacks but 1 label files"):
        ns.train([image, image], [labels], tmp_path / "o.pt", checkpoint="x.pt")
    assert snapshot(tmp_path) == {
        "img.npy": snapshot(tmp_path)["img.npy"],
        "lab.npy": snapshot(tmp_path)["lab.npy"],
    }


@refused
def test_an_output_url_is_refused(tmp_path, capsys, pair):
    argv = ["train", pair[0], "--labels", pair[1], "-o", "https://host/mine.pt", *NO_MODEL, *FAST]
    refuses(argv, capsys, tmp_path, "output https://host/mine.pt is a URL")
