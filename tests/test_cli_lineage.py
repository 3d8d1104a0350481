"""``segment --new-objects N --divisions --format ctc --tracks``: the real network (random
weights, 128-pixel input), the CTC folder read back by traccuracy with its format checks, the
tracks by csv and geff; every refusal before the model loads (exit 2)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from napari_sam2.cli import main

FAST = ["--image-size", "128", "--device", "cpu", "--quiet"]
FINDER = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def dividing_stack(frames: int = 6, shape=(48, 64)):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    stack = []
    for t in range(frames):
        d = 0 if t < 3 else 8 + 2 * t
        cells = ((rows - 24) ** 2 + (cols - 32 + d) ** 2 < 36) | (
            (rows - 24) ** 2 + (cols - 32 - d) ** 2 < 36
        )
        stack.append(cells * 3000 + 500)
    return np.stack(stack).astype(np.uint16)


@pytest.fixture
def stack(tmp_path):
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, dividing_stack(), photometric="minisblack")
    prompt = tmp_path / "first.tif"
    rows, cols = np.mgrid[:48, :64]
    tifffile.imwrite(prompt, (((rows - 24) ** 2 + (cols - 32) ** 2) < 36).astype(np.uint16))
    return tif, prompt


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.filterwarnings("ignore:tracks .* merge")
@pytest.mark.parametrize("tracks", ["tracks.csv", "tracks.geff"])
def test_ctc_folder_and_tracks_of_a_lineage_run(
    stack, random_tiny_checkpoint, tmp_path, capsys, tracks
):
    from traccuracy.loaders import load_ctc_data

    tif, prompt = stack
    out, table = tmp_path / "res", tmp_path / tracks
    argv = ["segment", tif, "-p", prompt, "-o", out, "--format", "ctc", "--tracks", table]
    argv += ["--new-objects", 3, "--divisions", "--direction", "forward", *FINDER]
    code, stdout, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir())[-1] == "res_track.txt"
    assert len(list(out.glob("mask*.tif"))) == 6
    graph = load_ctc_data(str(out), run_checks=True)  # the CTC rules hold
    assert graph.segmentation.shape == (6, 48, 64)
    if tracks.endswith(".csv"):
        with open(table) as f:
            rows = list(csv.DictReader(f))
        assert {"frame", "track_id", "parent", "area", "centroid_y", "mean_intensity"} <= set(
            rows[0]
        )
    else:
        import geff

        g, _ = geff.read(str(table))
        assert g.number_of_nodes() >= 1
    # the same outputs again: refused before the model loads
    code, _, stderr = run([*argv, "--checkpoint", tmp_path / "missing.pt", *FAST], capsys)
    assert code == 2 and "exists" in stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--divisions"], "--direction forward"),
        (["--tracks", "t.txt"], ".csv or .geff"),
        (["--new-objects", "0"], "must be at least 1"),
        (["--new-objects", "2", "--points-per-side", "0"], "--new-objects: points_per_side"),
        (["--format", "ctc", "--resume"], "--resume does not apply"),
        (["--tracks", "t.csv", "--workers", "2"], "run on this machine"),
    ],
)
def test_lineage_options_are_checked_before_the_model(stack, tmp_path, capsys, extra, message):
    tif, prompt = stack
    argv = ["segment", tif, "-p", prompt, "-o", tmp_path / "o.tif", *extra]
    code, _, stderr = run([*argv, "--checkpoint", tmp_path / "missing.pt", *FAST], capsys)
    assert code == 2 and message in stderr, stderr


def test_tracks_of_several_stacks_are_refused(stack, tmp_path, capsys):
    tif, prompt = stack
    other = tmp_path / "more.tif"
    other.write_bytes(tif.read_bytes())
    argv = ["segment", tif, other, "-p", prompt, "-o", tmp_path / "out", "--tracks", "t.csv"]
    code, _, stderr = run([*argv, "--checkpoint", tmp_path / "missing.pt", *FAST], capsys)
    assert code == 2 and "give one stack" in stderr
