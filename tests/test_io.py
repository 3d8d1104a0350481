"""Files in and out without the model: prompts CSV parsing, lazy stacks, label outputs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam2.io import (
    InputError,
    PromptsFileError,
    label_counts,
    label_dtype,
    label_output,
    open_stack,
    read_prompts,
    stack_stem,
)


def _csv(tmp_path, text, name="p.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_clicks_and_boxes_mixed_grouped_per_object_and_frame(tmp_path):
    path = _csv(
        tmp_path,
        "\ufeff# clicks and boxes\n"
        "Frame, Obj_ID, row, col, label, min_row, min_col, max_row, max_col\n"
        "3, 2, 10.5, 20, negative,,,,\n"
        "0, 1, 5, 6, 1,,,,\n"
        "\n"
        "3, 2,,,, 1, 2, 30, 40\n"
        "3, 2, 12, 22, POS,,,,\n"
        "0, 1, 7, 8, 0.0,,,,\n",
    )
    first, second = read_prompts(path)
    assert (first.frame, first.obj_id) == (0, 1)
    assert first.points == [(5, 6), (7, 8)] and first.labels == [1, 0] and first.box is None
    assert first.lines == [4, 8]
    assert (second.frame, second.obj_id, second.box) == (3, 2, (1, 2, 30, 40))
    assert second.points == [(10.5, 20), (12, 22)] and second.labels == [0, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("frame,obj_id,row,col\n0,0,1,1\n", "line 2: obj_id must be a positive integer, got '0'"),
        ("frame,obj_id,row,col\n1.5,1,1,1\n", "line 2: frame must be an integer >= 0"),
        ("frame,obj_id,row,col\n0,1,a,1\n", "line 2: row must be a number, got 'a'"),
        ("frame,obj_id,row,col,label\n0,1,1,1,\n", "line 2: label must be 1 / 0"),
        ("frame,obj_id,row\n0,1,1\n", "line 1: header"),
        ("frame,obj_id,x,y\n0,1,1,1\n", "rename y to row and x to col"),
        (
            "frame,obj_id,row,col,min_row,min_col,max_row,max_col\n0,1,1,1,1,1,2,2\n",
            "line 2: the row has both a click and a box",
        ),
        (
            "frame,obj_id,min_row,min_col,max_row,max_col\n0,1,1,1,2,2\n\n0,1,1,1,3,3\n",
            "lines 2, 4: two boxes for object 1 on frame 0",
        ),
        ("frame,obj_id,row,col\n", "no prompts"),
        ("", "empty"),
    ],
)
def test_bad_rows_are_named_by_line(tmp_path, text, message):
    path = _csv(tmp_path, text)
    with pytest.raises(PromptsFileError) as info:
        read_prompts(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_prompts_are_checked_against_the_stack(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((3, 20, 30), np.uint16))
    stack = open_stack(tmp_path / "s.npy")
    path = _csv(tmp_path, "frame,obj_id,min_row,min_col,max_row,max_col\n0,1,5,5,2,2\n")
    with pytest.raises(PromptsFileError, match=r"line 2: box .* has min > max"):
        read_prompts(path, stack)


def test_napari_points_map_onto_the_tracked_axis(tmp_path):
    # (Z=2, T=5, Y, X) tracked along T (axis 1) at z = 1: napari's axis-1 is the frame.
    np.save(tmp_path / "s.npy", np.zeros((2, 5, 20, 30), np.uint16))
    stack = open_stack(tmp_path / "s.npy", axis=1, index=1)
    assert stack.frames.shape == (5, 20, 30) and stack.label_shape == (5, 20, 30)
    header = "index,axis-0,axis-1,axis-2,axis-3"
    path = _csv(tmp_path, f"{header}\n0,1.0,4.0,10.0,11.0\n1,1.0,2.0,3.0,4.0\n")
    a, b = read_prompts(path, stack)
    assert (a.frame, a.obj_id, a.points, a.labels) == (2, 2, [(3, 4)], [1])  # own object each
    assert (b.frame, b.obj_id, b.points) == (4, 1, [(10, 11)])
    path = _csv(tmp_path, f"{header}\n0,0.0,4.0,10.0,11.0\n")
    with pytest.raises(PromptsFileError, match="line 2: the point lies at 0 on axis 0"):
        read_prompts(path, stack)
    path = _csv(tmp_path, "index,axis-0,axis-1,axis-2,positive\n0,1,2,3,0.0\n")
    with pytest.raises(PromptsFileError, match="4 dimensions"):
        read_prompts(path, stack)
    with pytest.raises(PromptsFileError, match="negative point needs an obj_id"):
        read_prompts(path)


def test_stacks_open_lazily_in_every_format(tmp_path):
    data = (np.arange(4 * 24 * 32) % 1000).reshape(4, 24, 32).astype(np.uint16)
    tifffile.imwrite(tmp_path / "u.tif", data, photometric="minisblack")
    tifffile.imwrite(tmp_path / "c.ome.tif", data, compression="zlib", metadata={"axes": "TYX"})
    np.save(tmp_path / "n.npy", data)
    zarr.open_array(str(tmp_path / "z.zarr"), mode="w", shape=data.shape, dtype=data.dtype)[:] = (
        data
    )
    kinds = {}
    for name in ("u.tif", "c.ome.tif", "n.npy", "z.zarr"):
        stack = open_stack(tmp_path / name)
        kinds[name] = type(stack.frames.data).__name__
        assert stack.frames.shape == (4, 24, 32) and stack.frames.dtype == np.uint16
        np.testing.assert_array_equal(stack.frames[2], data[2])
        stack.close()
    assert kinds["u.tif"] == "memmap" and kinds["n.npy"] == "memmap"  # never loaded whole
    assert kinds["c.ome.tif"] == "Array"  # compressed: read chunk by chunk through zarr
    assert stack_stem("c.ome.tif") == "c" and stack_stem("/a/z.zarr") == "z"


def test_rgb_and_single_images(tmp_path):
    rgb = np.zeros((3, 24, 32, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    stack = open_stack(tmp_path / "rgb.tif")
    assert stack.frames.shape == (3, 24, 32, 3) and stack.label_shape == (3, 24, 32)
    np.save(tmp_path / "one.npy", np.zeros((24, 32), np.float32))
    stack = open_stack(tmp_path / "one.npy")
    assert stack.frames.shape == (1, 24, 32) and stack.frames[0].shape == (24, 32)
    with pytest.raises(InputError, match="only axis that can be tracked is 0"):
        open_stack(tmp_path / "rgb.tif", axis=1)
    with pytest.raises(InputError, match="--index 5 is out of range"):
        np.save(tmp_path / "4d.npy", np.zeros((2, 3, 24, 32), np.uint8))
        open_stack(tmp_path / "4d.npy", axis=0, index=5)
    with pytest.raises(InputError, match="unsupported file type"):
        (tmp_path / "x.png").write_bytes(b"")
        open_stack(tmp_path / "x.png")


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_label_output_appears_only_when_complete(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    with pytest.raises(KeyboardInterrupt), label_output(path, (3, 8, 9), np.uint16) as labels:
        labels[0] = 1
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with label_output(path, (3, 8, 9), label_dtype(70_000)) as labels:
        labels[1] = 5
        labels[2, :2] = 70_000
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    back = tifffile.imread(path) if suffix == ".tif" else zarr.open(str(path), mode="r")[:]
    assert back.shape == (3, 8, 9) and back.dtype == np.uint32
    assert label_counts(back) == {5: (72, 1), 70_000: (18, 1)}
    assert label_counts(back, [5, 9]) == {5: (72, 1), 9: (0, 0), 70_000: (18, 1)}
    with pytest.raises(InputError, match="exists"):
        with label_output(path, (3, 8, 9)):
            pass
