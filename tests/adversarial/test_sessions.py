"""Saved session folders, damaged or made for something else: refused with one message naming
the file and the field, before anything is restored; and a good one resumed in another process
gives the same objects, prompts and labels."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import moving_disc, snapshot

from napari_sam2.engine.stack import StackGeometry
from napari_sam2.io import ObjectPrompt
from napari_sam2.io import session_folder as sf

refused = pytest.mark.refused
handled = pytest.mark.handled


def _write(folder: Path, stack: np.ndarray, checkpoint=None, labels=None) -> Path:
    geometry = StackGeometry(stack.shape, False, 0, {})
    if labels is None:
        labels = np.zeros(stack.shape, np.uint16)
        labels[2, 10:20, 12:24] = 1
        labels[2, 26:34, 30:40] = 2
    prompts = [ObjectPrompt(2, 1, [(15.0, 18.0)], [1]), ObjectPrompt(2, 2, [(30.0, 35.0)], [1])]
    return sf.write(
        folder,
        image_name="cells",
        geometry=geometry,
        frames=geometry.frames(stack),
        model=sf.SessionModel("sam2.1_hiera_tiny", 128, checkpoint=checkpoint),
        names={1: "nucleus"},
        mask_prompts={},
        prompts=prompts,
        labels=labels,
    )


@pytest.fixture
def saved(tmp_path, disc_stack):
    return _write(tmp_path / "session", disc_stack)


def _edit_json(folder: Path, edit) -> None:
    path = folder / "session.json"
    info = json.loads(path.read_text())
    info = edit(info)
    path.write_text(json.dumps(info))


def _refused(folder: Path, *words: str) -> str:
    before = snapshot(folder)
    with pytest.raises(sf.SessionError) as e:
        s = sf.read(folder)
        sf.check_labels(s)
    message = str(e.value)
    for word in words:
        assert word in message, message
    assert snapshot(folder) == before  # nothing written, nothing lost
    return message


@refused
def test_a_session_json_holding_a_list(saved):
    (saved / "session.json").write_text("[1, 2]")
    _refused(saved, "session.json", "list")


@refused
@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda i: {k: v for k, v in i.items() if k != "image"}, ("'image'", "missing")),
        (lambda i: {k: v for k, v in i.items() if k != "model"}, ("'model'", "missing")),
        (lambda i: {**i, "image": {**i["image"], "shape": "big"}}, ("'image.shape'",)),
        (lambda i: {**i, "model": {**i["model"], "name": "sam9_huge"}}, ("'model.name'",)),
        (lambda i: {**i, "model": {**i["model"], "input_size": 100}}, ("'model.input_size'",)),
        (lambda i: {**i, "model": {**i["model"], "precision": "fp8"}}, ("'model.precision'",)),
        (lambda i: {**i, "image": {**i["image"], "stack_axis": 7}}, ("'image'", "axis 7")),
        (lambda i: {**i, "image": {**i["image"], "stack_axis": "t"}}, ("'image.stack_axis'",)),
        (lambda i: {**i, "mask_prompts": {"two": [1]}}, ("'mask_prompts'", "'two'")),
        (lambda i: {**i, "mask_prompts": {"99": [1]}}, ("'mask_prompts'", "'99'")),
        (lambda i: {**i, "mask_prompts": {"2": "1"}}, ("'mask_prompts'", "slice 2")),
        (lambda i: {**i, "names": {"one": "cell"}}, ("'names'", "'one'")),
        (lambda i: {**i, "names": {"1": 5}}, ("'names'",)),
        (lambda i: {**i, "format": "something else"}, ("'format'",)),
    ],
)
def test_bad_fields_of_session_json_are_named(saved, edit, words):
    _edit_json(saved, edit)
    _refused(saved, "session.json", *words)


@refused
def test_labels_of_another_shape(saved):
    import zarr

    zarr.create_array(
        store=str(saved / "labels.zarr"), shape=(6, 40, 50), dtype="uint16", overwrite=True
    )
    _refused(saved, "labels.zarr", "(6, 40, 50)", "(6, 40, 56)")


@refused
def test_a_damaged_labels_chunk_is_found_before_anything_is_restored(saved):
    chunks = [p for p in (saved / "labels.zarr").rglob("*") if p.is_file() and "c" in p.parts]
    assert chunks  # slice 2 was written
    for chunk in chunks:
        chunk.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    _refused(saved, "labels.zarr", "damaged", "slice 2")


@refused
@pytest.mark.parametrize("name", ["prompts.csv", "labels.zarr", "session.json"])
def test_a_missing_file_is_named(saved, name):
    import shutil

    path = saved / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    _refused(saved, name, "missing")


@refused
def test_prompts_off_the_image_name_the_line(saved):
    text = (saved / "prompts.csv").read_text().replace("2,2,30,35", "9,2,30,35")
    (saved / "prompts.csv").write_text(text)
    _refused(saved, "prompts.csv", "line 3", "slice 9")


@refused
def test_an_image_with_one_edited_slice_is_refused(saved, disc_stack):
    session = sf.read(saved)
    edited = disc_stack.copy()
    edited[4, 3, 3] += 1  # one pixel of a slice the old 8-slice check never read
    geometry = session.geometry
    with pytest.raises(sf.SessionError, match="slice 4 of this image differs"):
        sf.check_image(session, edited.shape, False, geometry.frames(edited))
    with pytest.raises(sf.SessionError, match=r"shape \(6, 40, 56\)"):
        sf.check_image(session, (6, 40, 57), False)
    sf.check_image(session, disc_stack.shape, False, geometry.frames(disc_stack))  # the same


@handled
def test_every_slice_is_hashed_not_eight(tmp_path):
    stack = moving_disc(t=20)
    folder = _write(tmp_path / "s", stack)
    hashes = json.loads((folder / "session.json").read_text())["image"]["slice_hashes"]
    assert len(hashes) == 20 and len(set(hashes)) == 20


ROUND_TRIP = textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_sam2.engine.labels import compose_labels
    from napari_sam2.engine.session import PromptSession
    from napari_sam2.io import session_folder as sf
    from napari_sam2.model.checkpoint import load_model

    folder, stack_path, out = sys.argv[1:4]
    stack = np.load(stack_path)
    saved = sf.read(folder)
    sf.check_labels(saved)
    sf.check_image(saved, stack.shape, False, saved.geometry.frames(stack))
    m = saved.model
    model = load_model(m.name, m.checkpoint, "cpu", image_size=m.input_size)
    session = PromptSession(model, saved.geometry.frames(stack))
    sf.restore(session, saved)
    labels = np.zeros(saved.labels.shape, saved.labels.dtype)
    labels[:] = saved.labels[:]
    for r in session.propagate("both"):
        labels[r.frame] = compose_labels(labels[r.frame], r)
    np.save(out, labels)
    print("objects", *sorted(session.obj_ids))
    """
)


@handled
def test_a_session_resumes_in_another_process(tmp_path, disc_stack, random_tiny_checkpoint):
    """Save (two objects clicked on one slice, a mask prompt on another), then a new process
    loads, restores and propagates: the same objects and labels as this process."""
    from napari_sam2.engine.labels import compose_labels
    from napari_sam2.engine.session import PointRow, PromptSession
    from napari_sam2.model.checkpoint import load_model

    model = load_model("sam2.1_hiera_tiny", random_tiny_checkpoint, "cpu", image_size=128)
    geometry = StackGeometry(disc_stack.shape, False, 0, {})
    session = PromptSession(model, geometry.frames(disc_stack))
    clicks = [PointRow(1, 2, 15, 20, True), PointRow(2, 2, 30, 44, True)]
    labels = np.zeros(disc_stack.shape, np.uint16)
    labels[2] = compose_labels(labels[2], session.sync_frame(2, clicks, []).result)
    mask = np.zeros(disc_stack.shape[1:], np.uint16)
    mask[20:30, 5:15] = 3
    session.add_label_prompts(4, mask)
    labels[4] = mask
    folder = sf.write(
        tmp_path / "session",
        image_name="cells",
        geometry=geometry,
        frames=geometry.frames(disc_stack),
        model=sf.SessionModel("sam2.1_hiera_tiny", 128, checkpoint=str(random_tiny_checkpoint)),
        names={3: "painted"},
        mask_prompts={4: [3]},
        prompts=[ObjectPrompt(2, 1, [(15.0, 20.0)], [1]), ObjectPrompt(2, 2, [(30.0, 44.0)], [1])],
        labels=labels,
    )
    expected = labels.copy()
    for r in session.propagate("both"):
        expected[r.frame] = compose_labels(expected[r.frame], r)
    assert {1, 2, 3} <= set(np.unique(expected[2:5]).tolist())

    np.save(tmp_path / "stack.npy", disc_stack)
    out = tmp_path / "resumed.npy"
    run = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, str(folder), str(tmp_path / "stack.npy"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "objects 1 2 3" in run.stdout
    np.testing.assert_array_equal(np.load(out), expected)
    back = sf.read(folder)
    assert [(p.frame, p.obj_id, p.points) for p in back.prompts] == [
        (2, 1, [(15.0, 20.0)]),
        (2, 2, [(30.0, 44.0)]),
    ]
    assert back.names == {3: "painted"} and back.mask_prompts == {4: [3]}


@handled
def test_a_session_of_the_first_format_still_reads(saved, disc_stack):
    def older(info):
        info["format"] = "napari-sam2 session 1"
        del info["image"]["slice_hashes"]
        del info["model"]["checkpoint"]
        info["image"]["signature"] = {"pixels_sha256": "0" * 64}
        return info

    _edit_json(saved, older)
    session = sf.read(saved)
    assert session.slice_hashes is None and session.model.checkpoint is None
    sf.check_image(session, disc_stack.shape, False, session.geometry.frames(disc_stack))
