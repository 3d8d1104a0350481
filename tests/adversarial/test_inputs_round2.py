"""Inputs that used to be read as something else: CSV ids through float, labels rounded, ids of
the wrong type, string flags, unbounded grids, odd OME-Zarr metadata, huge lazy images. Each is
now either refused before any work with the parameter, the value and what is accepted, or
handled exactly."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import moving_disc

import napari_sam2 as ns
from napari_sam2.engine.automatic import check_generator_options
from napari_sam2.engine.automatic_options import MAX_CLICKS
from napari_sam2.io import PromptsFileError, read_prompts

refused = pytest.mark.refused
handled = pytest.mark.handled


def write_csv(tmp_path, text: str, name: str = "p.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ CSV ids
@handled
def test_csv_ids_beyond_2_53_stay_distinct(tmp_path):
    path = write_csv(
        tmp_path,
        "frame,obj_id,row,col,label\n0,9007199254740993,5,5,1\n0,9007199254740992,6,6,1\n",
    )
    ids = sorted(p.obj_id for p in read_prompts(path))
    assert ids == [9007199254740992, 9007199254740993]


@handled
def test_csv_largest_uint64_id_is_read_exactly(tmp_path):
    path = write_csv(tmp_path, "frame,obj_id,row,col,label\n0,18446744073709551615,5,5,1\n")
    (prompt,) = read_prompts(path)
    assert prompt.obj_id == 2**64 - 1


@refused
def test_csv_id_beyond_uint64_quotes_the_real_value_and_limit(tmp_path):
    path = write_csv(tmp_path, "frame,obj_id,row,col,label\n0,18446744073709551616,5,5,1\n")
    with pytest.raises(PromptsFileError) as e:
        read_prompts(path)
    message = str(e.value)
    assert "line 2" in message
    assert "18446744073709551616" in message and "18446744073709551615" in message


@refused
def test_csv_float_spelled_id_beyond_2_53_is_refused(tmp_path):
    path = write_csv(tmp_path, "frame,obj_id,row,col,label\n0,9.007199254740993e15,5,5,1\n")
    with pytest.raises(PromptsFileError, match=r"line 2: obj_id .*digits only"):
        read_prompts(path)


@handled
def test_csv_ids_written_as_whole_floats_still_read(tmp_path):
    path = write_csv(tmp_path, "frame,obj_id,row,col,label\n2.0,3.0,5,5,1.0\n")
    (prompt,) = read_prompts(path)
    assert (prompt.frame, prompt.obj_id, prompt.labels) == (2, 3, [1])


@refused
@pytest.mark.parametrize("obj_id", ["3.0004", "3.5"])
def test_csv_fractional_id_is_refused(tmp_path, obj_id):
    path = write_csv(tmp_path, f"frame,obj_id,row,col,label\n0,{obj_id},5,5,1\n")
    with pytest.raises(
        PromptsFileError, match=rf"line 2: obj_id must be a positive integer.*{obj_id}"
    ):
        read_prompts(path)


@refused
@pytest.mark.parametrize("label", ["0.5", "0.9", "-0.5", "2", "1.5", "-1"])
def test_csv_labels_must_be_exactly_0_or_1(tmp_path, label):
    path = write_csv(tmp_path, f"frame,obj_id,row,col,label\n0,1,5,5,{label}\n")
    with pytest.raises(PromptsFileError, match=rf"line 2: label must be 1 / 0 exactly.*'{label}'"):
        read_prompts(path)


@refused
def test_napari_points_labels_must_be_exactly_0_or_1(tmp_path):
    path = write_csv(tmp_path, "index,axis-0,axis-1,positive\n0,5,5,0.5\n")
    with pytest.raises(PromptsFileError, match=r"line 2: label must be 1 / 0 exactly"):
        read_prompts(path)


# ------------------------------------------------------------------------ add_labels' obj_ids
@pytest.fixture
def tracker(mini_model):
    return ns.VideoTracker(mini_model, moving_disc(3))


def disc_labels():
    labels = np.zeros((40, 56), np.uint16)
    labels[10:20, 10:20] = 3
    labels[25:35, 30:40] = 9
    return labels


@refused
@pytest.mark.parametrize(
    ("obj_ids", "match"),
    [
        ([3.7], r"obj_ids: object ids are positive integers.*3\.7 \(float\)"),
        ("39", r"obj_ids must be a list of object ids.*'39'"),
        (3, r"obj_ids must be a list of object ids.*e\.g\. \[3\], got 3"),
        ([True], r"obj_ids: .*not bool.*True \(bool\)"),
        (np.array([3.0]), r"obj_ids: .*float64"),
    ],
)
def test_add_labels_obj_ids_of_the_wrong_type(tracker, obj_ids, match):
    before = (tracker.obj_ids, tracker.prompted_frames())
    with pytest.raises(ns.PromptError, match=match):
        tracker.add_labels(0, disc_labels(), obj_ids=obj_ids)
    assert (tracker.obj_ids, tracker.prompted_frames()) == before


@handled
def test_add_labels_obj_ids_as_numpy_integers(tracker):
    res = tracker.add_labels(0, disc_labels(), obj_ids=np.array([9], dtype=np.int64))
    assert res.obj_ids == (9,) and tracker.obj_ids == (9,)


# ----------------------------------------------------------------- segment-everything options
@refused
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("multimask_output", "no"),
        ("use_m2m", "yes"),
        ("use_m2m", 1),
        ("crop_overlap_ratio", "0.3"),
        ("pred_iou_thresh", "0.8"),
        ("stability_score_offset", "1"),
        ("mask_threshold", None),
        ("points_per_side", True),
        ("channel", 1.0),
    ],
)
def test_amg_options_of_the_wrong_type(mini_model, name, value):
    with pytest.raises(
        TypeError, match=rf"{name} must be .*got {value!r} \({type(value).__name__}\)"
    ):
        ns.AutomaticMaskGenerator(mini_model, **{name: value})


@refused
@pytest.mark.parametrize(
    ("options", "count"),
    [
        ({"points_per_side": 10**6}, 10**12),
        ({"points_per_side": 2000}, 4_000_000),
        ({"points_per_side": 32, "crop_n_layers": 9}, None),
        ({"points_per_side": 1, "crop_n_layers": 10**9}, None),
    ],
)
def test_amg_grids_beyond_the_click_bound_are_refused(mini_model, options, count):
    with pytest.raises(
        ValueError, match=rf"clicks per image, more than the bound of {MAX_CLICKS:,}"
    ) as e:
        ns.AutomaticMaskGenerator(mini_model, **options)
    if count is not None:
        assert f"{count:,} clicks" in str(e.value)
    with pytest.raises(ValueError, match="bound"):
        check_generator_options(**options)


@handled
def test_amg_at_the_click_bound_builds_no_grid_until_a_crop_is_reached(mini_model):
    import tracemalloc

    tracemalloc.start()
    gen = ns.AutomaticMaskGenerator(mini_model, points_per_side=512)  # exactly MAX_CLICKS
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100_000  # the whole grid is 512² x 2 float64 = 4 MiB

    calls = []

    class Stop(Exception):
        pass

    def cancel(done, total):
        calls.append((done, total))
        raise Stop

    with pytest.raises(Stop):
        gen.generate(np.zeros((16, 16), np.uint8), progress=cancel)
    assert calls == [(0, MAX_CLICKS)]


@refused
def test_amg_progress_that_is_not_callable(mini_model):
    gen = ns.AutomaticMaskGenerator(mini_model, points_per_side=2)
    with pytest.raises(TypeError, match=r"progress must be a function progress\(done, total\).*5"):
        gen.generate(np.zeros((16, 16), np.uint8), progress=5)


@handled
def test_amg_window_as_a_low_high_pair(mini_model):
    image = np.zeros((32, 32), np.uint16)
    image[8:20, 8:20] = 90
    image[0, 0] = 60000  # a hot pixel that percentiles would not see, a window does
    gen = ns.AutomaticMaskGenerator(
        mini_model, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    by_pair = gen.generate(image, window=(0, 100))
    by_window = gen.generate(image, window=ns.IntensityWindow(0, 100))
    assert len(by_pair) == len(by_window) > 0
    for a, b in zip(by_pair, by_window):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.score == b.score


@handled
def test_image_predictor_window_as_a_low_high_pair(mini_model):
    image = (np.arange(32 * 32).reshape(32, 32) % 200).astype(np.uint16)
    p = ns.ImagePredictor(mini_model)
    p.set_image(image, window=(0, 100))
    by_pair = p.predict(points=[(10, 10)], labels=[1]).logits
    p.set_image(image, window=ns.IntensityWindow(0, 100))
    np.testing.assert_array_equal(by_pair, p.predict(points=[(10, 10)], labels=[1]).logits)


@refused
@pytest.mark.parametrize(
    ("window", "error", "match"),
    [
        ((100, 0), ValueError, "high > low"),
        ("0,100", TypeError, r"window must be an IntensityWindow or a pair of numbers"),
        ((0, 50, 100), TypeError, r"window must be .*\(0, 50, 100\)"),
        ((0, float("nan")), ValueError, "finite"),
    ],
)
def test_amg_bad_windows(mini_model, window, error, match):
    gen = ns.AutomaticMaskGenerator(mini_model, points_per_side=2)
    with pytest.raises(error, match=match):
        gen.generate(np.zeros((16, 16), np.uint16), window=window)


# ------------------------------------------------------------------------ OME-Zarr metadata
def ome_zarr_image(path, axes=("z", "y", "x"), scale=(1.0, 0.5, 0.5), units=None):
    """An NGFF 0.4 image of 4 frames, its metadata written as given (good or bad)."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", data=moving_disc(4))
    entries = []
    for i, name in enumerate(axes):
        entry = {"name": name, "type": "space"}
        if units and units[i]:
            entry["unit"] = units[i]
        entries.append(entry)
    transform = {"type": "scale", "scale": list(scale)}
    dataset = {"path": "0", "coordinateTransformations": [transform]}
    root.attrs["multiscales"] = [{"version": "0.4", "axes": entries, "datasets": [dataset]}]
    return path


@pytest.mark.usefixtures("cli_env")
@refused
@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"scale": (float("nan"), 0.5, 0.5)}, "pixel sizes must be finite numbers > 0, not nan"),
        ({"scale": (1.0, 0.0, 0.5)}, "pixel sizes must be finite numbers > 0, not 0.0"),
        ({"scale": (1.0, 0.5, -0.5)}, "pixel sizes must be finite numbers > 0, not -0.5"),
        ({"scale": (1.0, "0.5", 0.5)}, "pixel sizes must be finite numbers > 0, not '0.5'"),
        ({"scale": (0.5, 0.5)}, "has 2 values ([0.5, 0.5]) for 3 axes"),
        ({"scale": (1.0, 0.5, 0.5, 0.5)}, "has 4 values"),
        ({"axes": ("z", "y", "y")}, "name 'y' more than once"),
    ],
)
def test_ome_zarr_metadata_no_output_could_carry(tmp_path, capsys, metadata, match):
    from cli_helpers import NO_MODEL, refuses

    image = ome_zarr_image(tmp_path / "cells.ome.zarr", **metadata)
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col,label\n0,1,15,20,1\n")
    with pytest.raises(ns.io.InputError, match=re.escape(match)):
        ns.io.open_stack(image)
    argv = ["segment", image, "-p", "p.csv", "-o", "out.ome.zarr", *NO_MODEL]
    err = refuses(argv, capsys, tmp_path, match)
    assert "cells.ome.zarr" in err


@pytest.mark.usefixtures("cli_env")
@handled
def test_ome_zarr_unit_pixel_is_dropped_with_a_warning(random_tiny_checkpoint, tmp_path, capsys):
    from cli_helpers import run

    image = ome_zarr_image(tmp_path / "cells.ome.zarr", units=("pixel", "micrometer", "um"))
    with pytest.warns(UserWarning, match=r"axis 'z' has the unit 'pixel', which is not an NGFF"):
        stack = ns.io.open_stack(image)
    assert stack.geometry.units == (None, "micrometer", "um")
    stack.close()
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col,label\n0,1,15,20,1\n")
    argv = ["segment", image, "-p", "p.csv", "-o", "out.ome.zarr"]
    argv += ["--checkpoint", random_tiny_checkpoint, "--image-size", "128", "--quiet"]
    with pytest.warns(UserWarning, match=r"'pixel', which is not an NGFF unit"):
        code, err = run(argv, capsys)
    assert code == 0, err
    text = (tmp_path / "out.ome.zarr" / "sam2" / "zarr.json").read_text()
    meta = json.loads(text)["attributes"]["ome"]["multiscales"][0]
    assert [a.get("unit") for a in meta["axes"]] == [None, "micrometer", "micrometer"]
    assert meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]


# ------------------------------------------------------------------------ large lazy images
def smooth_large_image(height=5000, width=4000):
    """A lazy (dask) uint16 image above LARGE_IMAGE_PIXELS: a bright disc on a gradient, held
    in memory before the measurement starts (what dask computes is not ours to count)."""
    import dask.array as da

    rows, cols = np.ogrid[:height, :width]
    disc = ((rows - 2000) ** 2 + (cols - 1500) ** 2) < 900**2
    data = (200 + cols // 10 + 3000 * disc).astype(np.uint16)
    return da.from_array(data, chunks=(1000, 1000))


@handled
def test_image_predictor_reads_a_large_lazy_image_in_bounded_memory(mini_model):
    import tracemalloc

    from napari_sam2.engine.preprocess import LARGE_IMAGE_PIXELS, prepare_image

    image = smooth_large_image()
    nbytes = image.size * image.dtype.itemsize  # 40 MB
    assert image.size > LARGE_IMAGE_PIXELS
    p = ns.ImagePredictor(mini_model)
    tracemalloc.start()
    p.set_image(image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < nbytes, f"peak {peak / 1e6:.0f} MB for a {nbytes / 1e6:.0f} MB image"
    assert p.image_shape == (5000, 4000)
    # the reduced path sees what the exact path sees
    x = prepare_image(np.asarray(image), image_size=mini_model.config.image_size)
    from napari_sam2.engine.preprocess import prepare_large_image

    y = prepare_large_image(image, image_size=mini_model.config.image_size)
    assert y.shape == x.shape
    diff = (x - y).abs()  # in ImageNet-normalised units; the filters differ only at edges
    assert float(diff.mean()) < 0.02 and float(diff.flatten().quantile(0.99)) < 0.3
