"""Embeddings stores holding windows (ImagePredictor on tiles, WindowTracker, ``segment
--embeddings --tiles``) given what does not fit: a store made for another model or input size
(refused, before any work, nothing changed), a store written with other windows (another tile,
halo or margin: the windows that coincide are read, the others computed and added), a read-only
store (read; what it lacks computed elsewhere, said once). The real network at 128 px."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from cli_helpers import FAST, NO_MODEL, refuses
from conftest import snapshot
from test_embeddings_store import _as_nobody, _lock  # run as nobody; a store made read-only

import napari_sam2 as ns
from napari_sam2.engine.embeddings import EmbeddingsError, EmbeddingStore, EmbeddingsWarning

refused = pytest.mark.refused
handled = pytest.mark.handled
CLICKS = [(45, 50), (230, 350)]  # two windows of 128 pixels apart


def image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:300, :420]
    discs = ((rows % 90 - 45) ** 2 + (cols % 100 - 50) ** 2 < 15**2).astype(np.float64)
    return (500 + 3000 * discs + rng.normal(0, 80, discs.shape)).clip(0).astype(np.uint16)


def stack(t: int = 4) -> np.ndarray:
    return np.stack([np.roll(image(), 6 * i, axis=1) for i in range(t)])


def encodings(model, fn):
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        return fn(), len(calls)
    finally:
        hook.remove()


def clicks(model, img, store, clicks=CLICKS, **options):
    p = ns.ImagePredictor(model, tiles=True, **options)
    p.set_image(img, embeddings=store, embeddings_dtype="float32")
    return [(r.tile, r.logits) for r in (p.predict(points=[c], labels=[1]) for c in clicks)]


def tracked(model, frames, store, **options):
    options = {"embeddings": store, "embeddings_dtype": "float32", **options}
    tracker = ns.WindowTracker(model, frames, **options)
    try:
        tracker.add_prompt(0, 1, points=[(45, 50)], labels=[1])
        tracker.add_prompt(0, 2, points=[(230, 350)], labels=[1])
        return np.stack([r.logits for r in tracker.propagate("forward")])
    finally:
        tracker.close()


@pytest.fixture(scope="module")
def other_model():
    """The same architecture and input as ``mini_model``, other (random) weights."""
    from official import random_tiny

    return random_tiny(128, seed=5, object_bias=1.0)


# ------------------------------------------------------------------ another model
@refused
def test_a_store_of_another_model_is_refused_by_the_predictor(mini_model, other_model, tmp_path):
    store = tmp_path / "image.zarr"
    clicks(mini_model, image(), store)
    before = snapshot(store)
    p = ns.ImagePredictor(other_model, tiles=True)
    p.set_image(image(1))
    kept = p.predict(points=[CLICKS[0]], labels=[1]).logits

    def refuse():
        with pytest.raises(EmbeddingsError, match=r"made for something else — differs: weights"):
            p.set_image(image(), embeddings=store)

    _, took = encodings(other_model, refuse)
    assert snapshot(store) == before and took == 0
    np.testing.assert_array_equal(p.predict(points=[CLICKS[0]], labels=[1]).logits, kept)


@refused
def test_a_store_of_another_model_is_refused_by_the_window_tracker(
    mini_model, other_model, tmp_path
):
    frames = stack()
    store = tmp_path / "stack.zarr"
    tracked(mini_model, frames, store)
    before = snapshot(store)
    with pytest.raises(EmbeddingsError, match="weights"):
        ns.WindowTracker(other_model, frames, embeddings=store)
    assert snapshot(store) == before


@refused
def test_segment_tiles_on_refuses_a_store_of_another_input_size(mini_model, tmp_path, capsys):
    frames = stack(2)
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, frames, photometric="minisblack")
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col,label\n0,1,45,50,1\n")
    from napari_sam2.engine.frames import FrameSource

    window = FrameSource(frames, image_size=128).window  # as the command line sets it
    tracked(mini_model, frames, tmp_path / "s.embeddings.zarr", window=window)
    argv = ["segment", tif, "-p", tmp_path / "p.csv", "-o", tmp_path / "o.tif", *NO_MODEL]
    fast = [a if a != "128" else "256" for a in FAST]  # --image-size 256
    extra = ["--tiles", "on", "--embeddings", tmp_path / "s.embeddings.zarr"]
    refuses([*argv, *fast, *extra], capsys, tmp_path, "input size (128 in the store, 256 here)")


# ------------------------------------------------------------------ damaged windows
@refused
def test_segment_refuses_a_store_with_a_damaged_window_before_the_model(
    mini_model, tmp_path, capsys
):
    import shutil

    from napari_sam2.engine.frames import FrameSource

    frames = stack(2)
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, frames, photometric="minisblack")
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col,label\n0,1,45,50,1\n")
    store = tmp_path / "s.embeddings.zarr"
    tracked(mini_model, frames, store, window=FrameSource(frames, image_size=128).window)
    damaged = sorted((store / "windows").iterdir())[0]
    shutil.rmtree(damaged / "frames")
    argv = ["segment", tif, "-p", tmp_path / "p.csv", "-o", tmp_path / "o.tif", *FAST, *NO_MODEL]
    extra = ["--tiles", "on", "--embeddings", store]
    err = refuses([*argv, *extra], capsys, tmp_path, f"{damaged.name} is damaged")
    assert "per-frame records" in err and "Delete it" in err


@handled
def test_a_damaged_window_met_while_prompting_is_said_and_computed(mini_model, tmp_path):
    import shutil

    store = tmp_path / "image.zarr"
    clicks(mini_model, image(), store)
    (damaged,) = [p for p in (store / "windows").iterdir() if p.name.startswith("0-0-")]
    shutil.rmtree(damaged / "features")
    expected = clicks(mini_model, image(), None)
    with pytest.warns(EmbeddingsWarning, match="is damaged.*computed, not kept"):
        got, took = encodings(mini_model, lambda: clicks(mini_model, image(), store))
    assert took == 1  # the damaged window; the other one is read
    for (tile_a, a), (tile_b, b) in zip(got, expected):
        assert tile_a == tile_b
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ other windows
@handled
def test_a_store_written_with_another_tile_and_halo_adds_the_new_windows(mini_model, tmp_path):
    store = tmp_path / "image.zarr"
    clicks(mini_model, image(), store, halo=32)  # windows every 96 pixels
    expected, fresh = encodings(mini_model, lambda: clicks(mini_model, image(), None, tile=160))
    got, took = encodings(mini_model, lambda: clicks(mini_model, image(), store, tile=160))
    assert took == fresh == 2  # no window of 160 pixels was stored: both computed
    for (tile_a, a), (tile_b, b) in zip(got, expected):
        assert tile_a == tile_b
        np.testing.assert_array_equal(a, b)
    windows = EmbeddingStore.open(store, EmbeddingStore.read_signature(store), 1).windows_stored
    assert len(windows) == 4 and {t for t, _ in got} <= set(windows)
    # the first geometry's windows are still there, and read
    again, took = encodings(mini_model, lambda: clicks(mini_model, image(), store, halo=32))
    assert took == 0


@handled
def test_a_store_tracked_with_another_margin_gives_the_in_ram_result(mini_model, tmp_path):
    frames = stack(3)
    store = tmp_path / "stack.zarr"
    tracked(mini_model, frames, store, margin=8)
    expected = tracked(mini_model, frames, False, margin=24)
    got = tracked(mini_model, frames, store, margin=24)
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------ read-only stores
@handled
def test_a_read_only_store_gives_its_windows_and_the_rest_is_computed(mini_model):
    # one thread here as in the child below: the thread count changes the last bits, and the
    # child compares what it computes, reads and is given bit for bit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _read_only_store(mini_model)
    finally:
        torch.set_num_threads(threads)


def _read_only_store(mini_model):
    expected = clicks(mini_model, image(), None)
    frames = stack(3)
    tracked_ram = tracked(mini_model, frames, False)
    with tempfile.TemporaryDirectory() as tmp:  # under /tmp: open to every user
        root = Path(tmp)
        root.chmod(0o755)
        clicks(mini_model, image(), root / "image.zarr", clicks=CLICKS[:1])  # one window of two
        tracked(mini_model, frames, root / "stack.zarr", margin=8)  # other windows
        for path in (root / "image.zarr", root / "stack.zarr"):
            _lock(path)
        before = snapshot(root)

        def run():
            torch.set_num_threads(1)
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                got, took = encodings(
                    mini_model, lambda: clicks(mini_model, image(), root / "image.zarr")
                )
                tracks = tracked(mini_model, frames, root / "stack.zarr")
            said = [str(w.message) for w in seen if w.category is EmbeddingsWarning]
            same = all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected))
            return [took, same, bool(np.array_equal(tracks, tracked_ram)), said]

        result, err = _as_nobody(run)
        for path in (root / "image.zarr", root / "stack.zarr"):
            path.chmod(0o755)
        assert snapshot(root) == before
    assert not isinstance(result, int), err  # -1: the child raised
    took, same, same_tracks, said = result
    assert took == 1 and same and same_tracks, err
    assert len(said) == 2 and all("cannot be written (read-only)" in s for s in said), said
