"""Window embeddings in the embeddings store: an image predictor on tiles and a window tracker
write each window's embeddings there and read them back instead of running the image encoder
again. Encoder calls are counted with a forward hook on the real (tiny, random) network."""

from __future__ import annotations

import numpy as np
import pytest

import napari_sam2 as ns
from napari_sam2.engine.embeddings import EmbeddingsError, EmbeddingStore


def count_encodings(model):
    """A list that grows by one at every run of ``model``'s image encoder, and the hook."""
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    return calls, hook


def big_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:300, :420]
    discs = ((rows % 90 - 45) ** 2 + (cols % 100 - 50) ** 2 < 15**2).astype(np.float64)
    return (500 + 3000 * discs + rng.normal(0, 80, discs.shape)).clip(0).astype(np.uint16)


CLICKS = [(45, 50), (230, 350)]  # in two different windows of 128 pixels


def answers(model, image, store, cache_windows=8, **options):
    """Logits and windows of the clicks, and how many encoder runs they took."""
    p = ns.ImagePredictor(model, tiles=True, cache_windows=cache_windows, **options)
    calls, hook = count_encodings(model)
    try:
        p.set_image(image, embeddings=store, embeddings_dtype="float32")
        out = [p.predict(points=[c], labels=[1]) for c in CLICKS]
        out += [p.predict(points=[c], labels=[1]) for c in CLICKS]  # back to the first window
    finally:
        hook.remove()
    return [r.logits for r in out], [r.tile for r in out], len(calls)


def test_a_second_predictor_on_the_store_encodes_no_stored_window(mini_model, tmp_path):
    image = big_image()
    store = tmp_path / "image.embeddings.zarr"
    ram, ram_tiles, ram_calls = answers(mini_model, image, None)
    first, tiles, first_calls = answers(mini_model, image, store, cache_windows=1)
    assert ram_calls == 2 and tiles == ram_tiles and tiles[0] != tiles[1]
    # one window in RAM: going back to the first one reads it from the store, not the encoder
    assert first_calls == 2
    second, _, second_calls = answers(mini_model, image, store)
    assert second_calls == 0
    for a, b, c in zip(ram, first, second):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    opened = EmbeddingStore.open(store, EmbeddingStore.read_signature(store), 1, "float32")
    assert sorted(opened.windows_stored) == sorted(set(tiles))


def test_a_float16_store_answers_within_rounding(mini_model, tmp_path):
    image = big_image()
    store = tmp_path / "half.zarr"
    p = ns.ImagePredictor(mini_model, tiles=True)
    p.set_image(image, embeddings=store)  # float16: the default of a store at a path
    exact = p.predict(points=[CLICKS[0]], labels=[1])
    q = ns.ImagePredictor(mini_model, tiles=True)
    calls, hook = count_encodings(mini_model)
    try:
        q.set_image(image, embeddings=store)
        again = q.predict(points=[CLICKS[0]], labels=[1])
    finally:
        hook.remove()
    assert len(calls) == 0 and q.embeddings.dtype == "float16"
    assert np.abs(again.logits - exact.logits).max() < 0.05 * np.abs(exact.logits).max()


def test_an_untiled_image_is_the_store_s_frame_zero(mini_model, tmp_path):
    image = big_image()[:100, :120]
    store = tmp_path / "small.zarr"
    first = ns.ImagePredictor(mini_model, tiles="auto")
    first.set_image(image, embeddings=store, embeddings_dtype="float32")
    a = first.predict(points=[(45, 50)], labels=[1])
    calls, hook = count_encodings(mini_model)
    try:
        second = ns.ImagePredictor(mini_model, tiles="auto")
        second.set_image(image, embeddings=store)
        b = second.predict(points=[(45, 50)], labels=[1])
    finally:
        hook.remove()
    assert len(calls) == 0 and a.tile == b.tile == (0, 0, 100, 120)
    np.testing.assert_array_equal(a.logits, b.logits)


def test_a_store_of_another_image_is_refused_and_the_image_kept(mini_model, tmp_path):
    store = tmp_path / "image.zarr"
    p = ns.ImagePredictor(mini_model, tiles=True)
    p.set_image(big_image(0), embeddings=store)
    before = p.predict(points=[CLICKS[0]], labels=[1])
    with pytest.raises(EmbeddingsError, match="pixel content"):
        p.set_image(big_image(1), embeddings=store)
    after = p.predict(points=[CLICKS[0]], labels=[1])
    np.testing.assert_array_equal(before.logits, after.logits)
    with pytest.raises(EmbeddingsError, match="intensity window"):
        p.set_image(big_image(0), embeddings=store, window=(0, 4000))


def moving_stack(t: int = 5, size: int = 384) -> np.ndarray:
    """Two discs crossing a uint16 frame of three 128-pixel inputs a side."""
    rr, cc = np.mgrid[:size, :size]
    rng = np.random.default_rng(0)
    frames = rng.normal(600, 60, (t, size, size))
    for i in range(t):
        frames[i][(rr - 64) ** 2 + (cc - 64 - 20 * i) ** 2 < 12**2] += 3000
        frames[i][(rr - 300) ** 2 + (cc - 290) ** 2 < 14**2] += 2500
    return frames.clip(0).astype(np.uint16)


def tracked(model, frames, embeddings):
    """Every frame's logits of two objects tracked in windows, and the encoder runs it took."""
    calls, hook = count_encodings(model)
    tracker = ns.WindowTracker(model, frames, embeddings=embeddings, embeddings_dtype="float32")
    try:
        tracker.add_prompt(0, 1, points=[(64, 64)], labels=[1])
        tracker.add_prompt(0, 2, points=[(300, 290)], labels=[1])
        logits = [r.logits for r in tracker.propagate("forward")]
        return np.stack(logits), sum(tracker.recentrings.values()), len(calls)
    finally:
        tracker.close()
        hook.remove()


def test_a_window_tracker_on_a_store_encodes_no_stored_window_frame(mini_model, tmp_path):
    frames = moving_stack()
    store = tmp_path / "stack.embeddings.zarr"
    in_ram, moves, ram_calls = tracked(mini_model, frames, False)
    first, moves_first, first_calls = tracked(mini_model, frames, store)
    second, moves_second, second_calls = tracked(mini_model, frames, store)
    assert ram_calls == first_calls > len(frames)  # two windows a frame, and re-centrings
    assert second_calls == 0
    assert moves == moves_first == moves_second
    np.testing.assert_array_equal(first, in_ram)
    np.testing.assert_array_equal(second, in_ram)
    opened = EmbeddingStore.open(store, EmbeddingStore.read_signature(store), len(frames))
    assert {(0, 0, 128, 128), (256, 256, 384, 384)} <= set(opened.windows_stored)


def test_the_strided_stack_window_is_frame_source_s_rule_on_a_sample():
    from napari_sam2.engine.frames import FrameSource
    from napari_sam2.engine.preprocess import IntensityWindow
    from napari_sam2.engine.window_frames import stack_window

    rng = np.random.default_rng(3)
    small = rng.gamma(2.0, 300.0, (8, 200, 200)).astype(np.uint16)  # 320k pixels: read whole
    ours = stack_window(small, small.shape, small.dtype, 0, (0.5, 99.5))
    assert ours == FrameSource(small, image_size=128).window
    big = rng.gamma(2.0, 300.0, (3, 1200, 1200)).astype(np.uint16)  # every 3rd row and column
    ours = stack_window(big, big.shape, big.dtype, 0, (0.5, 99.5))
    assert ours == IntensityWindow.from_percentiles(big[:, ::3, ::3], (0.5, 99.5))
    whole = FrameSource(big, image_size=128).window
    assert whole == IntensityWindow.from_percentiles(big, (0.5, 99.5)) and whole != ours
