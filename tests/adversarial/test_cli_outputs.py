"""The command line's outputs and ``--resume``: an output is never anything the run reads or
keeps, a resume replaces only outputs it can prove are its own and incomplete, and what is
written stays bounded by the tracked range. Runs that must be refused name a checkpoint that
does not exist, so a check made too late would exit 3 (weights) instead of 2 (input)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from cli_helpers import FAST, NO_MODEL, refuses
from cli_helpers import run_all as run
from conftest import moving_disc

refused = pytest.mark.refused
handled = pytest.mark.handled
pytestmark = pytest.mark.usefixtures("cli_env")


def read_labels(path) -> np.ndarray:
    name = str(path)
    if name.endswith(".ome.zarr"):
        return zarr.open_group(path, mode="r")["sam2/0"][:]
    if name.endswith(".zarr"):
        return zarr.open_array(path, mode="r")[:]
    return tifffile.imread(path)


# ------------------------------------------------------------------ outputs are never inputs
@refused
@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["-o", "e.zarr", "--embeddings", "e.zarr"], "output e.zarr is the input e.zarr"),
        (["-o", "e.zarr", "--embeddings", "e.zarr/s.zarr"], "contains the input e.zarr/s.zarr"),
        (["-o", "e.zarr/out.zarr", "--embeddings", "e.zarr"], "lies inside the input e.zarr"),
        (["-o", "sp.zarr", "--spill-dir", "sp.zarr"], "output sp.zarr is the input sp.zarr"),
    ],
    ids=["is-the-store", "holds-the-store", "inside-the-store", "is-the-spill-dir"],
)
def test_an_output_is_never_the_embeddings_store_or_spill_folder(
    data, tmp_path, capsys, options, match
):
    tif, csv = data
    (tmp_path / "e.zarr").mkdir()
    (tmp_path / "e.zarr" / "keep.txt").write_text("embeddings")
    (tmp_path / "sp.zarr").mkdir()
    (tmp_path / "sp.zarr" / "keep.txt").write_text("spill")
    argv = ["segment", tif, "-p", csv, *options, "--overwrite"]
    refuses([*argv, *NO_MODEL, *FAST], capsys, tmp_path, match)


@refused
@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["-o", "https://host/out.tif"], "output https://host/out.tif is a URL"),
        (["-o", "s3://bucket/out/"], "output s3://bucket/out/ is a URL"),
        (["-o", "http://host/img.ome.zarr/labels/sam2"], "output http://host/img.ome.zarr"),
        (["-o", "o.tif", "--embeddings", "s3://b/e.zarr"], "embeddings s3://b/e.zarr is a URL"),
        (["-o", "o.tif", "--spill-dir", "https://h/sp"], "--spill-dir https://h/sp is a URL"),
    ],
    ids=["tiff", "folder", "image-labels", "embeddings", "spill-dir"],
)
def test_a_url_to_write_to_is_refused_before_anything(data, tmp_path, capsys, options, match):
    """Stacks may be URLs (read-only); what is written is local: a URL output, store or spill
    folder is exit 2, naming it, before the model loads, and nothing appears (a URL taken for
    a path would make a folder ``https:`` here)."""
    tif, csv = data
    err = refuses(["segment", tif, "-p", csv, *options, *NO_MODEL, *FAST], capsys, tmp_path, match)
    assert "writes outputs and reads prompts and embeddings only as local files" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "s.tif"]


@refused
def test_prompts_at_a_url_are_refused_as_prompts_not_as_a_missing_file(data, tmp_path, capsys):
    tif, _ = data
    argv = ["segment", tif, "-p", "https://host/p.csv", "-o", "o.tif", *NO_MODEL, *FAST]
    refuses(argv, capsys, tmp_path, "prompts file https://host/p.csv is a URL")
    argv = ["embed", tif, "-o", "s3://bucket/e.zarr", *NO_MODEL, *FAST]
    refuses(argv, capsys, tmp_path, "embeddings s3://bucket/e.zarr is a URL")


@refused
def test_a_real_embeddings_store_is_never_replaced_by_the_labels(
    data, tmp_path, capsys, random_tiny_checkpoint
):
    tif, csv = data
    model = ["--checkpoint", random_tiny_checkpoint, *FAST]
    code, _, err = run(["embed", tif, "-o", "e.zarr", *model], capsys)
    assert code == 0, err
    argv = ["segment", tif, "-p", csv, "-o", "e.zarr", "--embeddings", "e.zarr", "--overwrite"]
    refuses([*argv, *model], capsys, tmp_path, "output e.zarr is the input e.zarr")


# ------------------------------------------------------------------------------ resume
@refused
@pytest.mark.parametrize("kind", ["zarr-group", "zarr-array-right-shape", "tiff-right-shape"])
def test_resume_never_replaces_what_it_did_not_write(data, tmp_path, capsys, kind):
    tif, csv = data
    if kind == "zarr-group":
        out = "out.zarr"
        group = zarr.open_group(tmp_path / out, mode="w")
        group.create_array("notes", shape=(3,), dtype="int32")[:] = [1, 2, 3]
    elif kind == "zarr-array-right-shape":
        out = "out.zarr"
        zarr.open_array(tmp_path / out, mode="w", shape=(4, 40, 56), dtype="u2")[:] = 7
    else:
        out = "out.tif"
        tifffile.imwrite(
            tmp_path / out, np.full((4, 40, 56), 7, np.uint16), photometric="minisblack"
        )
    argv = ["segment", tif, "-p", csv, "-o", out, "--resume"]
    err = refuses([*argv, *NO_MODEL, *FAST], capsys, tmp_path, f"output {out} exists and was not")
    assert "--overwrite" in err


@handled
@pytest.mark.parametrize("suffix", [".tif", ".zarr", ".ome.zarr"])
def test_resume_redoes_its_own_output_cut_short_and_skips_it_complete(
    data, tmp_path, capsys, random_tiny_checkpoint, suffix
):
    tif, csv = data
    out = tmp_path / f"out{suffix}"
    argv = ["segment", tif, "-p", csv, "-o", out.name, "--checkpoint", random_tiny_checkpoint]
    code, _, err = run([*argv, *FAST], capsys)
    assert code == 0, err
    first = read_labels(out)
    assert first.any()
    code, stdout, err = run([*argv, "--resume", *FAST], capsys)  # complete: skipped
    assert code == 0 and "nothing to do, 1 stacks already segmented" in stdout, err
    if suffix != ".tif":
        return
    with open(out, "r+b") as f:  # a copy cut short: the last frame's bytes are gone
        f.truncate(out.stat().st_size - 40 * 56 * 2 + 10)
    code, stdout, err = run([*argv, "--resume", *FAST], capsys)
    assert code == 0, err
    assert "nothing to do" not in stdout and "-> out.tif" in stdout
    np.testing.assert_array_equal(tifffile.imread(out), first)


# ------------------------------------------------------------------ outputs of a tracked range
def long_zarr_stack(path, frames: int = 10**6):
    """A zarr stack of 10**6 frames of 40x56 of which only the first 4 are stored."""
    array = zarr.open_array(path, mode="w", shape=(frames, 40, 56), chunks=(1, 40, 56), dtype="u1")
    array[:4] = moving_disc(4)
    return array


@refused
def test_a_tiff_of_a_few_tracked_frames_of_a_long_stack_is_refused_for_zarr(tmp_path, capsys):
    long_zarr_stack(tmp_path / "long.zarr")
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
    argv = ["segment", "long.zarr", "-p", "p.csv", "-o", "out.tif", "--start", "0", "--stop", "2"]
    err = refuses([*argv, *NO_MODEL, *FAST], capsys, tmp_path, "a TIFF holds all 1,000,000")
    assert "only 3 are tracked" in err and "-o out.zarr" in err


@handled
def test_a_zarr_output_of_a_few_tracked_frames_stores_only_those(
    tmp_path, capsys, random_tiny_checkpoint
):
    long_zarr_stack(tmp_path / "long.zarr")
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
    argv = ["segment", "long.zarr", "-p", "p.csv", "-o", "out.zarr", "--start", "0", "--stop", "2"]
    code, stdout, err = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, err
    assert "3 frames (0-2) of 1000000" in stdout
    labels = zarr.open_array(tmp_path / "out.zarr", mode="r")
    assert labels.shape == (10**6, 40, 56)
    assert labels.nchunks_initialized <= 3 and labels[:3].any()
    size = sum(p.stat().st_size for p in (tmp_path / "out.zarr").rglob("*") if p.is_file())
    assert size < 1 << 20
