"""Start with no checkpoint in the cache: the download from a real HTTP server on 127.0.0.1
(tests/local_server.py) shows on the widget's progress bar and status line, and Cancel stops it.
The official URL is redirected as tests/test_weights.py does (the registry is a plain dict)."""

from __future__ import annotations

import os

import pytest
import torch
from local_server import LocalServer
from qt_helpers import moving_and_still_cell, wait

from napari_sam2 import weights
from napari_sam2._qt import feedback
from napari_sam2._qt.widget import SAM2Widget

pytestmark = pytest.mark.display

NAME = "sam2.1_hiera_tiny"
FILE = f"{NAME}.pt"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    monkeypatch.delenv(weights.SKIP_HASH_ENV, raising=False)
    return cache


def _serve(monkeypatch, server, body, size):
    server.files[FILE] = body
    monkeypatch.setitem(weights.REGISTRY, NAME, weights.Weights(NAME, server.url(FILE), size))


def _widget(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(moving_and_still_cell(t=3), name="cells")
    widget = SAM2Widget(viewer)
    widget.device.value = "cpu"
    widget.input_size.value = 256
    return widget


def test_start_downloads_the_model_with_progress_in_the_widget_and_loads_it(
    make_napari_viewer, qtbot, random_tiny_checkpoint, empty_cache, monkeypatch
):
    size = random_tiny_checkpoint.stat().st_size
    widget = _widget(make_napari_viewer)
    bar = widget.feedback.bar
    seen = []  # (value, max, visible, status) at each change of the bar
    bar.changed.connect(
        lambda v: seen.append((v, bar.max, not bar.native.isHidden(), widget.status.value))
    )
    with LocalServer() as server:
        _serve(monkeypatch, server, random_tiny_checkpoint, size)
        widget.start()
        wait(qtbot, widget)
        assert server.hits[FILE] == 1
    shown = [s for s in seen if s[2]]
    values = [v for v, *_ in shown]
    assert len(set(values)) >= 3 and values == sorted(values)  # it moved, forward only
    assert {m for _, m, *_ in shown} == {size // 1024} and values[-1] == size // 1024
    assert any(f"Downloading {FILE}" in s and "of 149 MiB" in s for *_, s in shown)
    assert widget.session is not None and "ready" in widget.status.value
    assert bar.native.isHidden() and widget.task is None and not widget.cancel_download.enabled
    assert sorted(os.listdir(empty_cache)) == [FILE]
    expected = torch.load(random_tiny_checkpoint, weights_only=True)["model"]
    got = widget.session.tracker.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in got.items())


def test_cancel_stops_the_download_keeps_nothing_and_start_works_again(
    make_napari_viewer, qtbot, empty_cache, monkeypatch
):
    payload = os.urandom(4 * 2**20)  # not a checkpoint: it is never loaded
    widget = _widget(make_napari_viewer)
    with LocalServer() as server:
        _serve(monkeypatch, server, payload, len(payload))
        server.pace[FILE] = 0.05  # about 3 s in all: Cancel lands in the middle
        widget.start()
        qtbot.waitUntil(lambda: not widget.feedback.bar.native.isHidden(), timeout=20_000)
        assert widget.cancel_download.enabled and widget.task == "downloading the model"
        widget.cancel_download.native.click()
        wait(qtbot, widget)
    assert widget.session is None
    assert f"Download of {FILE} cancelled; nothing was kept" in widget.status.value
    assert widget.feedback.bar.native.isHidden() and not widget.cancel_download.enabled
    assert not empty_cache.exists() or os.listdir(empty_cache) == []
    assert [layer.name for layer in widget.viewer.layers] == ["cells"]


def test_cancel_during_load_session_says_cancelled_and_keeps_nothing(
    make_napari_viewer, qtbot, model, empty_cache, monkeypatch, tmp_path
):
    widget = _widget(make_napari_viewer)
    widget.use_model(model)  # a model given by a script: the session names no checkpoint file
    widget.session_folder.value = str(tmp_path / "session")
    widget.save_session()
    wait(qtbot, widget)
    assert "Session saved" in widget.status.value
    session, layers = widget.session, [layer.name for layer in widget.viewer.layers]
    payload = os.urandom(4 * 2**20)
    errors = []
    monkeypatch.setattr(feedback, "show_error", errors.append)
    with LocalServer() as server:
        _serve(monkeypatch, server, payload, len(payload))
        server.pace[FILE] = 0.05
        widget.load_session()  # its model is not in the (empty) cache: downloaded
        qtbot.waitUntil(lambda: not widget.feedback.bar.native.isHidden(), timeout=20_000)
        assert widget.cancel_download.enabled and widget.task == "downloading the model"
        widget.cancel_download.native.click()
        wait(qtbot, widget)
    status = widget.status.value
    assert f"Download of {FILE} cancelled; nothing was kept" in status and "Load session" in status
    assert not status.startswith("⚠") and errors == []  # not an error
    assert widget.feedback.bar.native.isHidden() and not widget.cancel_download.enabled
    assert not empty_cache.exists() or os.listdir(empty_cache) == []
    # nothing loaded: the session running goes on, on the layers it had
    assert widget.session is session and not session.tracker.closed and len(widget._models) == 0
    assert [layer.name for layer in widget.viewer.layers] == layers
