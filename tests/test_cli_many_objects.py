"""``napari-sam2 segment`` with many objects: a label image as prompts (every id an object),
and ``--auto FRAME`` (segment everything on a frame, then track it all). The real network at a
128-pixel input with a random-weight checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from test_cli import FAST, run

pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture
def stack(tmp_path):
    """Five frames of three drifting discs (uint16), and the label image of frame 2."""
    rr, cc = np.mgrid[:64, :80]
    frames = np.full((5, 64, 80), 300, np.uint16)
    labels = np.zeros((64, 80), np.uint16)
    for i, (r, c) in enumerate([(16, 16), (20, 56), (46, 36)]):
        for t in range(5):
            frames[t][(rr - r - t) ** 2 + (cc - c) ** 2 < 8**2] = 3000 + 500 * i
        labels[(rr - r - 2) ** 2 + (cc - c) ** 2 < 8**2] = (4, 9, 300)[i]
    tifffile.imwrite(tmp_path / "s.tif", frames, photometric="minisblack")
    return tmp_path / "s.tif", labels


def test_a_label_image_prompts_every_object(stack, tmp_path, capsys, random_tiny_checkpoint):
    tif, labels = stack
    tifffile.imwrite(tmp_path / "seg.tif", labels)
    argv = ["segment", tif, "-p", "seg.tif", "--prompt-frame", 2, "-o", "out.tif"]
    code, out, err = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, err
    result = tifffile.imread(tmp_path / "out.tif")
    assert result.shape == (5, 64, 80) and set(np.unique(result)) <= {0, 4, 9, 300}
    assert set(np.unique(result[2])) == {0, 4, 9, 300}  # the prompted frame holds them all
    assert "3 objects, 5 frames (0-4) of 5" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["4", "9", "300"]


def test_a_label_volume_gives_the_prompt_frame(stack, tmp_path, capsys, random_tiny_checkpoint):
    tif, labels = stack
    volume = np.zeros((5, 64, 80), np.uint16)
    volume[2] = labels
    volume[0, :5, :5] = 77  # another frame's labels are not prompts
    np.save(tmp_path / "previous.npy", volume)
    argv = ["segment", tif, "-p", "previous.npy", "--prompt-frame", 2, "-o", "out.zarr"]
    code, out, err = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, err
    assert "3 objects" in out and " 77 " not in out


def test_auto_segments_a_frame_and_tracks_what_it_found(
    stack, tmp_path, capsys, random_tiny_checkpoint
):
    tif, _ = stack
    # Random weights predict low IoUs: open the filters so that masks survive.
    argv = ["segment", tif, "--auto", 1, "-o", "out.tif", "--points-per-side", 4]
    argv += ["--pred-iou-thresh", 0, "--stability-score-thresh", 0]
    code, out, err = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, err
    result = tifffile.imread(tmp_path / "out.tif")
    found = int(out.split(" objects")[0].split()[-1])
    assert found >= 1 and set(np.unique(result)) - {0} <= set(range(1, found + 1))
    assert (result[1] > 0).any()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["-p", "seg.tif", "--auto", "0"], "give either --prompts"),
        ([], "give either --prompts"),
        (["--auto", "9"], "--auto 9 is out of range: the stack has 5 frames"),
        (["--auto", "0", "--pred-iou-thresh", "2"], "--auto: pred_iou_thresh must be a number"),
        (["--auto", "0", "--points-per-side", "0"], "points_per_side must be an integer >= 1"),
        (["-p", "seg.tif", "--prompt-frame", "7"], "--prompt-frame 7 is out of range"),
        (["-p", "wrong.tif"], "a label image of shape (10, 10) does not fit"),
        (["-p", "float.npy"], "integer object ids"),
        (["-p", "empty.npy"], "the label image is empty on frame 0"),
    ],
)  # fmt: skip
def test_bad_many_object_options_exit_2_before_the_model(stack, tmp_path, capsys, args, match):
    tif, labels = stack
    tifffile.imwrite(tmp_path / "seg.tif", labels)
    tifffile.imwrite(tmp_path / "wrong.tif", np.ones((10, 10), np.uint16))
    np.save(tmp_path / "float.npy", labels.astype(np.float32))
    np.save(tmp_path / "empty.npy", np.zeros_like(labels))
    argv = ["segment", tif, *args, "-o", "out.tif", "--checkpoint", "missing.pt", *FAST]
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert match in err
    assert not (tmp_path / "out.tif").exists()
