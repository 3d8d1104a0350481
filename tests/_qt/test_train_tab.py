"""The Train tab, driven as a user would on a real viewer: it learns from the session's labelled
slice, shows its progress, Cancel stops it leaving the model in use untouched, and a finished
run switches the session to the trained weights (kept in the weights cache with their sidecar,
shown in Start → checkpoint), which the next click uses. The real network with random weights at
a 128-pixel input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from qt_helpers import TIMEOUT, click, started, wait

import napari_sam2 as ns
from napari_sam2.engine.session import PointRow, PromptSession
from napari_sam2.train import state_path

pytestmark = pytest.mark.display


def stack(t=4, h=48, w=56):
    rr, cc = np.mgrid[:h, :w]
    data = np.full((t, h, w), 300, np.uint16)
    for i in range(t):
        data[i][(rr - 16 - i) ** 2 + (cc - 20 - i) ** 2 < 9**2] = 3000
        data[i][(rr - 32) ** 2 + (cc - 42) ** 2 < 7**2] = 2500
    return data


@pytest.fixture
def session(make_napari_viewer, qtbot, model, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path / "cache"))
    viewer, widget = started(make_napari_viewer, qtbot, model, stack())
    click(qtbot, widget, 0, 16, 20)
    assert widget.label_view()[0].any()
    yield viewer, widget
    wait(qtbot, widget)


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _differ(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_training_switches_the_session_to_the_trained_model(qtbot, session, model, tmp_path):
    viewer, widget = session
    tab = widget.trainer
    before = _weights(model)
    tab.steps.value, tab.lr.value = 4, "0.01"
    tab.button.changed.emit(True)
    assert widget.task == "training" and tab.cancel.enabled
    assert not widget.cancel_button.enabled  # the Cancel of the tab that started it
    widget.propagate()  # one long task at a time
    assert "Busy training" in widget.status.value
    wait(qtbot, widget)
    assert widget.task is None and not tab.cancel.enabled

    report = tab.last_report
    out = report.path
    assert out.parent == tmp_path / "cache" and out.name.startswith("sam2.1_hiera_tiny-finetuned-")
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["steps"] == 4 and sidecar["image_size"] == 128
    assert sidecar["base_checkpoint"] == "weights given in memory"
    assert sidecar["data"][0]["frames"] == 1  # the one labelled slice, as an image
    assert widget.feedback.bar.value == 4  # the progress bar followed the steps
    assert "one-click IoU" in tab.figures.value and out.name in widget.status.value
    assert not state_path(out).exists()

    # The session runs on the trained weights, as loaded from the file; the old model is as it was.
    trained = widget.session.tracker.model
    assert trained is not model and not _differ(before, _weights(model))
    loaded = ns.load_model("sam2.1_hiera_tiny", checkpoint=out, device="cpu")
    assert loaded.config.image_size == 128
    assert not _differ(_weights(loaded), _weights(trained))
    assert _differ(before, _weights(trained))  # the decoder learnt something
    assert Path(widget.checkpoint.value) == out
    assert "Segmenting with" in widget.status.value

    # The next click is answered by the trained model (the layers were resumed from).
    assert len(widget.points.data) == 1
    click(qtbot, widget, 2, 18, 22)
    expected = PromptSession(loaded, stack())
    expected.sync_frame(0, [PointRow(1, 0, 16, 20, True)], [])
    result = expected.sync_frame(2, [PointRow(1, 2, 18, 22, True)], []).result
    mine = widget.label_view()[2] == 1
    assert np.array_equal(mine, result.logits[0] > 0)
    old = PromptSession(model, stack())
    old.sync_frame(0, [PointRow(1, 0, 16, 20, True)], [])
    assert not np.array_equal(
        mine, old.sync_frame(2, [PointRow(1, 2, 18, 22, True)], []).result.logits[0] > 0
    )


def test_cancel_leaves_the_model_in_use_and_a_resumable_state(qtbot, session, model):
    viewer, widget = session
    tab = widget.trainer
    before = _weights(model)
    tab.steps.value = 100_000
    tab.button.changed.emit(True)
    qtbot.waitUntil(lambda: tab._latest is not None, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: tab.figures.value.startswith("Step "), timeout=TIMEOUT)
    assert not widget.feedback.bar.native.isHidden() and widget.feedback.bar.value >= 1
    assert "loss" in tab.figures.value
    tab.cancel.changed.emit(True)
    wait(qtbot, widget)
    assert widget.task is None
    assert widget.session.tracker.model is model and not _differ(before, _weights(model))
    assert "Training stopped after step" in widget.status.value
    out = tab._stopped[0]
    assert not out.exists() and state_path(out).is_file()
    assert widget.checkpoint.value in (None, Path("."), Path(""))


def test_nothing_labelled_is_refused_before_any_work(make_napari_viewer, qtbot, model):
    viewer, widget = started(make_napari_viewer, qtbot, model, stack())
    widget.trainer.button.changed.emit(True)
    assert widget.task is None and "Nothing to learn from yet" in widget.status.value
    widget.trainer.lr.value = "fast"
    click(qtbot, widget, 0, 16, 20)
    widget.trainer.button.changed.emit(True)
    assert widget.task is None and "learning rate must be a number" in widget.status.value


def test_a_labels_layer_is_learnt_with_its_image(qtbot, session, tmp_path):
    """A painted Labels layer of another image: paired with that image by shape, its labelled
    slices (two consecutive: one stack) are training data too."""
    viewer, widget = session
    other = stack(3, 40, 40)
    viewer.add_image(other, name="other")
    painted = np.zeros(other.shape, np.uint8)
    painted[1:3, 5:20, 5:20] = 3
    layer = viewer.add_labels(painted, name="painted")
    tab = widget.trainer
    tab.layers.value = [layer]
    stacks, labels = tab.training_data()
    assert [s.shape for s in stacks] == [(48, 56), (2, 40, 40)]
    assert np.array_equal(stacks[1], other[1:3]) and np.array_equal(labels[1], painted[1:3])


def _mib_needed(message: str) -> float:
    return float(message.split(" needs ")[1].split(" MiB")[0].replace(",", ""))


def test_a_disk_too_small_is_said_plainly_before_any_step(qtbot, session, model, monkeypatch):
    """Less room than the result needs (the command line's test provokes it the same way): the
    status names the path, the space needed and what is free, in the tab's words (no errno,
    no --resume); nothing trained, nothing written, the model in use unchanged."""
    import shutil

    viewer, widget = session
    tab = widget.trainer
    before = _weights(model)
    free = shutil._ntuple_diskusage(1 << 40, 1 << 40, 10 << 20)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    tab.steps.value = 4
    tab.button.changed.emit(True)
    wait(qtbot, widget)
    status = widget.status.value
    folder = Path(widget.trainer.output_path("x").parent)
    assert status.startswith("⚠ The disk is full: writing ") and str(folder) in status, status
    assert "-finetuned-" in status and f"its folder {folder} has 10 MiB free" in status
    assert _mib_needed(status) > 2 * 149  # the checkpoint and the resumable state
    assert "Nothing was trained" in status and "[Errno" not in status and "--" not in status
    assert tab._latest is None and tab.figures.value == "Not started: the disk is full"
    assert list(folder.iterdir()) == [] and tab._stopped is None
    assert widget.session.tracker.model is model and not _differ(before, _weights(model))


def test_a_disk_that_fills_while_saving_keeps_the_run_and_train_again_saves_it(
    qtbot, session, model, monkeypatch
):
    """The disk fills part-way through writing the checkpoint: the status says so plainly and
    that the run is kept; once there is room, Train again (same options) only saves it."""
    import errno

    from napari_sam2.train import save

    viewer, widget = session
    tab = widget.trainer
    real, written = save._write, [0]

    def fills_up(f, data):
        if "-finetuned-" in Path(f.name).name and ".pt.tmp" in Path(f.name).name:
            written[0] += len(data)
            if written[0] > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, data)

    monkeypatch.setattr(save, "_write", fills_up)
    tab.steps.value = 4
    tab.button.changed.emit(True)
    wait(qtbot, widget)
    status = widget.status.value
    assert status.startswith("⚠ The disk is full: writing ") and "free" in status, status
    assert 149 <= _mib_needed(status) < 160  # the checkpoint and its sidecar
    assert "The run is kept" in status and "Train again with the same options" in status
    assert "[Errno" not in status and "--resume" not in status and written[0] > 1 << 20
    out = tab._stopped[0]
    assert not out.exists() and state_path(out).is_file()
    assert widget.session.tracker.model is model
    monkeypatch.setattr(save, "_write", real)  # room again
    tab.button.changed.emit(True)
    wait(qtbot, widget)
    report = tab.last_report
    assert report.path == out and out.is_file() and not state_path(out).exists()
    assert report.resumed_from == 4  # only saved, not trained again
    assert widget.session.tracker.model is not model and "Trained" in widget.status.value
