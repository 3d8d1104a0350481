"""Frame embeddings computed once: re-propagation, ``both`` and later sessions reuse them; a
store made for other data, weights or input size is refused. The real network at 128 px."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import napari_sam2 as ns
from napari_sam2.engine.embeddings import EmbeddingsError, EmbeddingStore


def disc_stack(t=8, h=40, w=56, shift=0):
    rr, cc = np.mgrid[:h, :w]
    stack = np.full((t, h, w), 20, np.uint8)
    for i in range(t):
        stack[i][(rr - 15 - i % 5) ** 2 + (cc - 20 - shift - i) ** 2 < 64] = 200
    return stack


def count_encodings(model):
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    return calls, hook


def test_repropagation_and_both_never_encode_a_frame_twice(mini_model):
    calls, hook = count_encodings(mini_model)
    try:
        tracker = ns.VideoTracker(mini_model, disc_stack(), feature_cache=1)
        tracker.add_prompt(3, 1, points=[(18, 26)], labels=[1])
        list(tracker.propagate("both"))  # forward 3..7, then backward 3..0 from the store
        tracker.add_prompt(5, 1, points=[(2, 2)], labels=[0])  # a correction
        list(tracker.propagate("forward"))  # 5..7 again
    finally:
        hook.remove()
    assert len(calls) == 8  # each of the 8 frames once
    assert tracker.embeddings.frames_done == 8


def test_a_kept_store_serves_the_next_session_exactly(mini_model, tmp_path):
    path = tmp_path / "stack.embeddings.zarr"
    stack = disc_stack()

    def session():
        t = ns.VideoTracker(mini_model, stack, embeddings=path, embeddings_dtype="float32")
        t.add_prompt(0, 1, points=[(15, 20)], labels=[1])
        results = [r.logits for r in t.propagate()]
        t.close()
        return np.stack(results)

    calls, hook = count_encodings(mini_model)
    try:
        first = session()
        assert len(calls) == 8 and path.is_dir()  # kept after close
        second = session()
        assert len(calls) == 8  # nothing encoded again
    finally:
        hook.remove()
    # float32 on disk: the same numbers (up to the order of float operations: a tensor read
    # back is laid out differently in memory from the one the encoder returned)
    np.testing.assert_allclose(first, second, atol=1e-5)
    without = ns.VideoTracker(mini_model, stack, embeddings=False)
    without.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    np.testing.assert_allclose(np.stack([r.logits for r in without.propagate()]), first, atol=1e-5)


def test_precompute_fills_a_float16_store_once(mini_model, tmp_path):
    """(How much float16 on disk changes results is measured on the parity scenarios:
    tests/parity/test_reduced_precision.py.)"""
    path = tmp_path / "half.zarr"
    stack = disc_stack()
    maker = ns.VideoTracker(mini_model, stack, embeddings=path)
    seen = []
    assert maker.precompute(progress=lambda done, total: seen.append((done, total))) == 8
    assert seen[-1] == (8, 8) and maker.precompute() == 0
    maker.close()
    assert zarr.open_group(str(path), mode="r")["features"].dtype == np.float16
    calls, hook = count_encodings(mini_model)
    try:
        tracker = ns.VideoTracker(mini_model, stack, embeddings=path)
        tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
        assert len(list(tracker.propagate())) == 8
    finally:
        hook.remove()
    assert calls == []


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (dict(frames=disc_stack(shift=3)), "pixel content"),
        (dict(frames=disc_stack(t=9)), "data shape"),
        (dict(channel=1), None),
        (dict(window=ns.IntensityWindow(0, 100)), "intensity window"),
    ],
    ids=["other-pixels", "other-length", "channel", "window"],
)
def test_a_store_made_for_other_data_is_refused(mini_model, tmp_path, other, match):
    path = tmp_path / "e.zarr"
    stack = disc_stack().astype(np.uint16)
    ns.VideoTracker(mini_model, stack, embeddings=path).precompute([0])
    kwargs = dict(frames=stack)
    if "channel" in other:  # a two-channel stack, read at another channel
        stack = np.stack([stack, stack], axis=-1)
        path = tmp_path / "two.zarr"
        ns.VideoTracker(mini_model, stack, embeddings=path).precompute([0])
        kwargs = dict(frames=stack, channel=1)
        match = "channel"
    kwargs.update({k: v for k, v in other.items() if k != "channel"})
    frames = kwargs.pop("frames")
    with pytest.raises(EmbeddingsError, match=rf"made for something else — differs: .*{match}"):
        ns.VideoTracker(mini_model, frames, embeddings=path, **kwargs)


def test_a_store_of_other_weights_or_input_size_is_refused(mini_model, tmp_path):
    from official import random_tiny

    path = tmp_path / "e.zarr"
    ns.VideoTracker(mini_model, disc_stack(), embeddings=path).precompute([0])
    with pytest.raises(EmbeddingsError, match="weights"):
        ns.VideoTracker(random_tiny(128, seed=9), disc_stack(), embeddings=path)
    with pytest.raises(EmbeddingsError, match=r"input size \(128 in the store, 192 here\)"):
        ns.VideoTracker(random_tiny(192, seed=2, object_bias=1.0), disc_stack(), embeddings=path)


def test_a_folder_that_is_not_a_store_is_refused(mini_model, tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(EmbeddingsError, match="not an embeddings store"):
        ns.VideoTracker(mini_model, disc_stack(), embeddings=tmp_path / "notes")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(EmbeddingsError, match="not a napari-sam2 embeddings store"):
        ns.VideoTracker(mini_model, disc_stack(), embeddings=tmp_path / "other.zarr")


def test_the_temporary_store_goes_with_close(mini_model, tmp_path):
    tracker = ns.VideoTracker(mini_model, disc_stack(), spill_dir=tmp_path)
    tracker.precompute([0, 1])
    (folder,) = list(tmp_path.iterdir())
    assert folder.name.startswith("napari-sam2-embeddings-")
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_a_store_can_be_shared_by_trackers_as_an_object(mini_model, tmp_path):
    store = EmbeddingStore.temporary(8, "float32", parent=tmp_path)
    ns.VideoTracker(mini_model, disc_stack(), embeddings=store).precompute([2])
    assert 2 in store and store.frames_done == 1
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_the_trackers_own_store_is_exact_and_a_kept_one_float16(mini_model, tmp_path):
    """Defaults: a tracker's temporary store keeps float32 (a revisited frame gives exactly what
    encoding it again gives); a new store at a path is float16 unless asked otherwise."""
    import torch

    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 48), dtype=np.uint8)
    own = ns.VideoTracker(mini_model, frames, spill_dir=tmp_path)
    kept = ns.VideoTracker(mini_model, frames, embeddings=tmp_path / "kept.zarr")
    try:
        assert own.embeddings.dtype == "float32"
        assert kept.embeddings.dtype == "float16"
        own.add_prompt(1, 1, points=[[20, 24]], labels=[1])
        first = [r.low_res for r in own.propagate(direction="forward")]
        own._embeddings.clear_ram()  # the second pass reads every frame from the store
        again = [r.low_res for r in own.propagate(direction="forward")]
        assert all(torch.equal(a, b) for a, b in zip(first, again))
    finally:
        own.close()
        kept.close()


def test_a_temporary_store_the_disk_cannot_hold_in_float32_is_float16_and_said(
    tmp_path, monkeypatch
):
    import shutil
    from collections import namedtuple

    from napari_sam2.engine import embeddings as store_module
    from napari_sam2.engine.embeddings import EmbeddingsWarning, store_bytes, temporary_dtype
    from napari_sam2.model.config import CONFIGS

    layout = store_module.embedding_layout(CONFIGS["sam2.1_hiera_tiny"])
    need = store_bytes(2000, layout, "float32")
    assert need == 2000 * 4 * (256 * 64 * 64 + 32 * 256 * 256 + 64 * 128 * 128)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(need, 0, need // 2))
    with pytest.warns(EmbeddingsWarning, match=r"2000 frames need .* GiB in float32"):
        assert temporary_dtype(2000, layout, tmp_path) == "float16"
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(4 * need, 0, 4 * need))
    assert temporary_dtype(2000, layout, tmp_path) == "float32"
