"""Embeddings stores that no longer hold what they claim: a frame changed since it was embedded,
chunks deleted, truncated or altered, weights changed in place, arrays missing or of the wrong
shape, a read-only store, two processes making one store, an interrupted ``embed``. What a store
returns must be the embedding of that frame under those weights — or it is computed again, or
the store is refused with a message that says what to do. The real network at 128 px."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from conftest import moving_disc, snapshot

import napari_sam2 as ns
from napari_sam2 import weights
from napari_sam2.cli import main
from napari_sam2.engine.embeddings import (
    EmbeddingsError,
    EmbeddingStore,
    EmbeddingsWarning,
    embedding_layout,
    frame_fingerprint,
)
from napari_sam2.model import CONFIGS
from napari_sam2.model.sam2 import ImageEmbedding

refused = pytest.mark.refused
handled = pytest.mark.handled
FAST = ["--image-size", "128", "--device", "cpu", "--quiet"]
NO_MODEL = ["--checkpoint", "does-not-exist.pt"]  # reached only if every input check passed
LAYOUT = embedding_layout(CONFIGS["sam2.1_hiera_tiny"].with_image_size(128))


def logits_on(model, frames, frame, embeddings):
    """The logits of a click on ``frame`` (they come from that frame's embedding)."""
    tracker = ns.VideoTracker(model, frames, embeddings=embeddings)
    try:
        return tracker.add_prompt(frame, 1, points=[(15, 20)], labels=[1]).logits
    finally:
        tracker.close()


def encodings_of(model, fn) -> int:
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        fn()
    finally:
        hook.remove()
    return len(calls)


def made_store(model, path, frames, which=None) -> Path:
    tracker = ns.VideoTracker(model, frames, embeddings=path, embeddings_dtype="float32")
    tracker.precompute(which)
    tracker.close()
    return path


def chunk(store: Path, name: str, t: int) -> Path:
    path = store / name / "c" / str(t) / "0" / "0" / "0"
    assert path.is_file()
    return path


# ------------------------------------------------------------------ a frame's own proof
@handled
def test_a_frame_changed_since_it_was_embedded_is_encoded_again(mini_model, tmp_path):
    frames = moving_disc(20)
    path = made_store(mini_model, tmp_path / "e.zarr", frames)
    changed = frames.copy()
    changed[3] = changed[3][::-1]  # frame 3 is not one of the 8 frames the signature samples
    expected = logits_on(mini_model, changed, 3, False)
    with pytest.warns(EmbeddingsWarning, match=r"frame 3 of the stack changed.*rewritten"):
        got = logits_on(mini_model, changed, 3, path)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: the next session reads it, silently
        assert encodings_of(mini_model, lambda: logits_on(mini_model, changed, 3, path)) == 0


def _delete(path):
    path.unlink()


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _garble(path):
    data = bytearray(path.read_bytes())
    data[40:48] = bytes(8)
    path.write_bytes(bytes(data))


@handled
@pytest.mark.parametrize("name", ["features", "high_res_0", "pos"])
@pytest.mark.parametrize(
    "damage", [_delete, _truncate, _garble], ids=["deleted", "truncated", "garbled"]
)
def test_a_damaged_chunk_is_encoded_again_and_rewritten(mini_model, tmp_path, damage, name):
    frames = moving_disc(4)
    path = made_store(mini_model, tmp_path / "e.zarr", frames)
    damage(chunk(path, name, 0) if name == "pos" else chunk(path, name, 2))
    expected = logits_on(mini_model, frames, 2, False)
    with pytest.warns(EmbeddingsWarning, match=r"frame 2's embedding (is damaged|cannot be read)"):
        got = logits_on(mini_model, frames, 2, path)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encodings_of(mini_model, lambda: logits_on(mini_model, frames, 2, path)) == 0


@refused
def test_weights_changed_in_place_are_noticed(tmp_path):
    from official import random_tiny

    model = random_tiny(128, seed=5)
    path = made_store(model, tmp_path / "e.zarr", moving_disc(3), [0])
    with torch.no_grad():
        next(model.image_encoder.parameters()).data.add_(0.5)  # no version bump, same storage
    before = snapshot(path)
    with pytest.raises(EmbeddingsError, match="differs: weights"):
        ns.VideoTracker(model, moving_disc(3), embeddings=path)
    assert snapshot(path) == before


# ------------------------------------------------------------------ structural damage
def _records_short(path):
    zarr.open_group(str(path), mode="r+").create_array(
        "frames", shape=(3, 2), dtype="uint64", overwrite=True
    )


def _features_shape(path):
    zarr.open_group(str(path), mode="r+").create_array(
        "features", shape=(4, 256, 4, 4), chunks=(1, 256, 4, 4), dtype="float32", overwrite=True
    )


def _old_format(path):
    zarr.open_group(str(path), mode="r+").attrs["format"] = "napari-sam2 embeddings 1"


STRUCTURAL = [
    (lambda p: shutil.rmtree(p / "frames"), r"records \(the 'frames' array\) are missing"),
    (lambda p: shutil.rmtree(p / "pos"), r"array\(s\) \['pos'\] are missing"),
    (_records_short, r"records have shape \(3, 2\).*has \(4, 2\)"),
    (_features_shape, r"'features' array has frames of shape \(256, 4, 4\), this model's are "
                      r"\(256, 8, 8\)"),
    (_old_format, r"older format .*delete it and embed again"),
]  # fmt: skip
STRUCTURAL_IDS = ["no-records", "no-pos", "short-records", "features-shape", "old-format"]


@refused
@pytest.mark.parametrize(("damage", "match"), STRUCTURAL, ids=STRUCTURAL_IDS)
def test_a_structurally_damaged_store_is_refused_before_any_work(
    mini_model, tmp_path, damage, match
):
    frames = moving_disc(4)
    path = made_store(mini_model, tmp_path / "e.zarr", frames, [0, 1])
    damage(path)
    before = snapshot(path)
    calls = []

    def open_it():
        with pytest.raises(EmbeddingsError, match=match) as info:
            ns.VideoTracker(mini_model, frames, embeddings=path)
        calls.append(str(info.value))

    assert encodings_of(mini_model, open_it) == 0
    assert str(path) in calls[0] and ("Delete it" in calls[0] or "delete it" in calls[0])
    assert snapshot(path) == before


@pytest.fixture
def tif_and_store(tmp_path, monkeypatch):
    """A 4-frame TIFF, a prompts CSV, and an (empty) store made for both (tiny at 128)."""
    from napari_sam2.engine.embeddings import data_signature
    from napari_sam2.engine.frames import FrameSource

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    stack = moving_disc(4, dtype=np.uint16, value=3000)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
    source = FrameSource(stack, image_size=128)
    signature = {**data_signature(source), "model": "sam2.1_hiera_tiny", "image_size": 128}
    EmbeddingStore.open(tmp_path / "e.zarr", signature, 4, layout=LAYOUT)
    return tmp_path


@refused
@pytest.mark.parametrize(("damage", "match"), STRUCTURAL, ids=STRUCTURAL_IDS)
@pytest.mark.parametrize("command", ["segment", "embed"])
def test_the_cli_refuses_a_damaged_store_before_the_model(
    tif_and_store, capsys, damage, match, command
):
    damage(tif_and_store / "e.zarr")
    before = snapshot(tif_and_store)
    argv = (
        ["segment", "s.tif", "-p", "p.csv", "-o", "o.tif", "--embeddings", "e.zarr"]
        if command == "segment"
        else ["embed", "s.tif", "-o", "e.zarr"]
    )
    code = main([*argv, *NO_MODEL, *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "e.zarr" in err and "Traceback" not in err
    assert snapshot(tif_and_store) == before


# ------------------------------------------------------------------ read-only stores
def _as_nobody(fn):
    """``fn()``'s (JSON) return value and stderr, run as a user who may not write the store:
    root ignores permissions, so root runs it in a forked child as ``nobody``."""
    from test_cli_inputs import _as_unprivileged_user

    return _as_unprivileged_user(fn)


def _lock(root: Path) -> None:
    """Every file under ``root`` read-only, every folder unwritable (readable by all)."""
    for p in sorted(root.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    root.chmod(0o555)


@handled
@pytest.mark.parametrize("held", [6, 3], ids=["complete", "partial"])
def test_a_read_only_store_is_read_and_what_it_lacks_is_computed(mini_model, held):
    frames = moving_disc(6)
    expected = [r.logits for r in _tracked(mini_model, frames, False)]
    with tempfile.TemporaryDirectory() as tmp:  # under /tmp: open to every user
        root = Path(tmp)
        root.chmod(0o755)
        path = made_store(mini_model, root / "e.zarr", frames, range(held))
        _lock(path)
        before = snapshot(path)

        def track():
            torch.set_num_threads(1)
            results = []
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                got = encodings_of(mini_model, lambda: results.extend(
                    r.logits for r in _tracked(mini_model, frames, path)))  # fmt: skip
            diff = max(float(np.abs(a - b).max()) for a, b in zip(results, expected))
            said = [str(w.message) for w in seen if w.category is EmbeddingsWarning]
            return [got, diff, len(results), said]

        result, err = _as_nobody(track)
        path.chmod(0o755)
        assert snapshot(path) == before
    assert not isinstance(result, int), err  # -1: the child raised
    encoded, diff, n, said = result
    assert n == 6 and encoded == 6 - held and diff < 1e-5, err
    if held == 6:
        assert said == []
    else:
        (message,) = said
        assert "cannot be written (read-only): the frames it lacks (3 of 6)" in message


def _tracked(model, frames, embeddings):
    tracker = ns.VideoTracker(model, frames, embeddings=embeddings)
    try:
        tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
        return list(tracker.propagate())
    finally:
        tracker.close()


@handled
def test_the_cli_reads_a_complete_store_in_a_read_only_folder(
    tmp_path, monkeypatch, random_tiny_checkpoint
):
    with tempfile.TemporaryDirectory() as tmp:  # under /tmp: open to every user
        root = Path(tmp)
        monkeypatch.setenv(weights.CACHE_ENV, str(root / "cache"))
        tifffile.imwrite(root / "s.tif", moving_disc(4), photometric="minisblack")
        (root / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
        shutil.copy(random_tiny_checkpoint, root / "tiny.pt")
        ckpt = ["--checkpoint", str(root / "tiny.pt")]
        store = root / "locked" / "e.zarr"
        store.parent.mkdir()
        assert main(["embed", str(root / "s.tif"), "-o", str(store), *ckpt, *FAST]) == 0
        _lock(store.parent)
        root.chmod(0o777)
        before = snapshot(store.parent)
        argv = ["segment", root / "s.tif", "-p", root / "p.csv", "-o", root / "o.tif"]
        argv = [str(a) for a in [*argv, "--embeddings", store, *ckpt, *FAST]]

        def segment():
            torch.set_num_threads(1)
            return main(argv)

        code, err = _as_nobody(segment)
        assert code == 0, err
        assert snapshot(store.parent) == before
        assert tifffile.imread(root / "o.tif").shape == (4, 40, 56)


# ------------------------------------------------------------------ two makers at once
def _fake_embedding(seed: int) -> ImageEmbedding:
    g = torch.Generator().manual_seed(seed)
    shapes = [LAYOUT["features"], LAYOUT["high_res_0"], LAYOUT["high_res_1"]]
    parts = [torch.rand(1, *s, generator=g) for s in shapes]
    return ImageEmbedding(parts[0], (parts[1], parts[2]), torch.ones(LAYOUT["pos"]))


def _make_and_put(path, t, barrier, results):
    try:
        barrier.wait()
        store = EmbeddingStore.open(path, {"stack": "one"}, 4, "float32", LAYOUT)
        store.put(t, _fake_embedding(t), pixels=t + 1)
        results.put("ok")
    except Exception as e:
        results.put(f"{type(e).__name__}: {e}")


@handled
def test_processes_making_one_store_at_once_all_succeed(tmp_path):
    context = multiprocessing.get_context("fork")
    for attempt in range(6):  # the old code lost this race in most attempts
        path = tmp_path / f"e{attempt}.zarr"
        barrier, results = context.Barrier(4), context.Queue()
        procs = [
            context.Process(target=_make_and_put, args=(path, t, barrier, results))
            for t in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert sorted(results.get(timeout=5) for _ in procs) == ["ok"] * 4
        store = EmbeddingStore.open(path, {"stack": "one"}, 4, "float32", LAYOUT)
        assert store.frames_done == 4
        for t in range(4):
            got = store.get(t, pixels=t + 1)
            assert got is not None
            torch.testing.assert_close(got.features, _fake_embedding(t).features)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ an interrupted embed
@handled
def test_an_interrupted_embed_says_the_store_is_kept_and_resumes(tmp_path, random_tiny_checkpoint):
    np.save(tmp_path / "s.npy", moving_disc(300))
    command = [sys.executable, "-m", "napari_sam2.cli", "embed", "s.npy", "-o", "e.zarr",
               "--checkpoint", str(random_tiny_checkpoint), *FAST]  # fmt: skip
    env = {**os.environ, weights.CACHE_ENV: str(tmp_path / "cache")}
    proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while len(list((tmp_path / "e.zarr" / "frames" / "c").glob("*"))) < 3:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "embed never stored a frame"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "no partial output was kept" not in stderr and "Traceback" not in stderr
    assert "e.zarr keeps the" in stderr and "run the same embed again" in stderr, stderr
    records = zarr.open_group(str(tmp_path / "e.zarr"), mode="r")["frames"][:]
    assert 3 <= np.count_nonzero(records[:, 0]) < 300  # the frames done are kept, checked
    assert int(records[0, 0]) == frame_fingerprint(moving_disc(300)[0])
