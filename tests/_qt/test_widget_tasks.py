"""Long tasks in the widget (one at a time, Cancel on the tab that started them), the note about
prompts given during a propagation, shortcuts that respect their buttons, messages in the
widget's words, and `napari-sam2 view` stopped by a signal. The real network with random
weights at a 128-pixel input, driven as a user would."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from qt_helpers import click, moving_and_still_cell, on_each_slice, started, wait

from napari_sam2._qt.widget import SAM2Widget

pytestmark = pytest.mark.display


stack = moving_and_still_cell


@pytest.fixture
def flow(make_napari_viewer, qtbot, model):
    viewer, widget = started(make_napari_viewer, qtbot, model, stack())
    yield viewer, widget
    wait(qtbot, widget)


def press(viewer, key: str) -> None:
    """The viewer's handler of ``key``, as napari calls it on a key press."""
    handler = next(h for k, h in viewer.keymap.items() if str(k) == key)
    handler(viewer)


def counting(widget):
    """Count the calls of the session's segment everything (the real one runs)."""
    calls = []
    real = widget.session.segment_everything

    def segment_everything(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    widget.session.segment_everything = segment_everything
    return calls


def test_a_double_click_on_segment_everything_runs_it_once(flow, qtbot):
    _, widget = flow
    tools = widget.objects
    tools.points_per_side.value = 4
    calls = counting(widget)
    tools.segment_all.native.click()
    tools.segment_all.native.click()  # the second click of a double click
    tools.segment_everything()  # (and called again directly: still once)
    wait(qtbot, widget)
    assert len(calls) == 1
    assert tools.segment_all.enabled  # usable again once it finished


def test_propagate_waits_for_segment_everything_and_its_tab_cancels_it(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 0, 15, 20)
    tools = widget.objects
    tools.points_per_side.value = 16
    tools.segment_everything()
    assert widget.task == "segmenting everything"
    assert widget.cancel_everything.enabled and not widget.cancel_button.enabled
    assert not widget.propagate_button.enabled
    widget.propagate()  # G, or a script: refused while segment everything runs
    assert widget.propagation_worker is None
    assert "Busy segmenting everything" in widget.status.value
    page = widget.pages["Many objects"].native
    assert widget.cancel_everything.native.parent() is page or page.isAncestorOf(
        widget.cancel_everything.native
    )
    widget.cancel_everything.native.click()
    wait(qtbot, widget)
    assert "cancelled; nothing was added" in widget.status.value
    assert widget.task is None and widget.propagate_button.enabled
    assert not widget.cancel_everything.enabled


def test_segment_everything_waits_for_a_propagation(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 0, 15, 20)
    calls = counting(widget)
    widget.propagate()
    assert widget.cancel_button.enabled and not widget.cancel_everything.enabled
    widget.objects.segment_everything()
    assert "Busy propagating" in widget.status.value
    wait(qtbot, widget)
    assert calls == [] and "Propagated" in widget.status.value


def test_a_prompt_whose_sync_ends_after_the_propagation_is_still_noted(flow, qtbot):
    """The loaded-machine order, made certain: the new click's sync reaches the tracker only
    after the propagation has finished."""
    _, widget = flow
    click(qtbot, widget, 0, 15, 20)
    widget.direction.value = "forward"
    finished = threading.Event()
    real_sync, real_done = widget.session.sync_frame, widget._propagation_done

    def late_sync(*args):
        assert finished.wait(30)
        return real_sync(*args)

    def done(*args):
        real_done(*args)
        finished.set()

    widget._propagation_done = done
    added = []

    def add_while_running(result):
        if not added:
            added.append(result.frame)
            widget.session.sync_frame = late_sync
            widget.next_object()
            widget.points.add([[4, 30, 44]])

    with on_each_slice(widget, add_while_running):
        widget.propagate()
        wait(qtbot, widget)
    assert added == [0] and finished.is_set()
    assert "Propagated over 6 slices" in widget.status.value
    assert "followed by the next Propagate" in widget.status.value
    assert (widget.labels_layer.data[4] == 2).any()


def test_g_on_a_single_image_does_not_propagate(make_napari_viewer, qtbot, model):
    viewer, widget = started(make_napari_viewer, qtbot, model, stack()[0])
    widget.points.add([[15, 20]])
    wait(qtbot, widget)
    assert not widget.propagate_button.enabled
    press(viewer, "G")
    assert widget.propagation_worker is None and not widget.busy
    assert "not available" in widget.status.value


def test_a_backwards_forward_range_is_told_in_slices_with_the_fix(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 3, 17, 22)
    widget.direction.value = "forward"
    widget.last.value = 1
    widget.propagate()
    status = widget.status.value
    assert "from slice 3 to slice 1" in status and "frame" not in status
    assert "'backward' or 'both'" in status and widget.propagation_worker is None


def test_changing_the_tracked_axis_mid_session_warns(make_napari_viewer, qtbot, model):
    data = np.stack([stack(t=3)] * 2)  # (2, 3, 40, 56): T, Z, Y, X
    _, widget = started(make_napari_viewer, qtbot, model, data)
    assert widget.geometry.stack_axis == 0
    widget.stack_axis.value = 1
    assert "tracks along axis 0" in widget.status.value
    assert "press Start again" in widget.status.value


def test_objects_from_labels_never_defaults_to_sam2_labels(make_napari_viewer, qtbot, model):
    viewer, widget = started(make_napari_viewer, qtbot, model, stack())
    widget.new_labels.value = True
    widget.use_model(model, viewer.layers["cells"])  # a second session, new SAM2 layers
    wait(qtbot, widget)
    assert widget.objects.source.value is None  # the first session's SAM2 labels are not offered
    viewer.add_labels(np.zeros((6, 40, 56), np.uint16), name="cellpose")
    assert widget.objects.source.value is viewer.layers["cellpose"]


def test_a_garbage_checkpoint_is_named_in_a_short_message(make_napari_viewer, qtbot, tmp_path):
    path = tmp_path / "not_sam2.pt"
    torch.save({"model": {"weight": np.zeros(3)}}, path)  # a pickle of a numpy array
    viewer = make_napari_viewer()
    viewer.add_image(stack(), name="cells")
    widget = SAM2Widget(viewer)
    widget.checkpoint.value = str(path)
    widget.start()
    wait(qtbot, widget)
    status = widget.status.value
    assert str(path) in status and "not an official SAM 2 checkpoint" in status
    assert "weights_only" not in status and len(status) < 300


def test_view_stops_on_sigterm(tmp_path):
    checkpoint = tmp_path / "unused.pt"
    checkpoint.write_bytes(b"")  # not read before Start
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_sam2.cli", "view", "--checkpoint", str(checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
        line = lines.get(timeout=120)  # said once napari is open
        assert "napari is open" in line
        time.sleep(1)  # inside napari's event loop
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 143
    assert "SIGTERM: closing napari" in process.stderr.read()


@pytest.mark.parametrize("name", ["labels.tif", "labels.ome.zarr"])
def test_export_writes_the_labels_with_pixel_sizes_and_names(
    make_napari_viewer, qtbot, model, tmp_path, name
):
    import tifffile
    import zarr

    _, widget = started(
        make_napari_viewer, qtbot, model, stack(), scale=(2.0, 0.5, 0.5), units="µm"
    )
    click(qtbot, widget, 2, 15, 20)
    widget.names[1] = "nucleus"
    widget.exporter.path.value = str(tmp_path / name)
    widget.exporter.button.native.click()
    wait(qtbot, widget)  # written in a worker
    status = widget.status.value
    assert "exported to" in status and "objects.csv" in status
    if name.endswith(".tif"):
        with tifffile.TiffFile(tmp_path / name) as tif:
            written = tif.asarray()
            pixels = tif.ome_metadata
        assert 'PhysicalSizeX="0.5"' in pixels and 'PhysicalSizeZ="2.0"' in pixels
    else:
        group = zarr.open_group(str(tmp_path / name), mode="r")
        written = np.asarray(group["sam2/0"])
        scale = group["sam2"].attrs.asdict()
        scale = (scale.get("ome", scale))["multiscales"][0]["datasets"][0]
        assert scale["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]
    np.testing.assert_array_equal(written, widget.labels_layer.data)
    assert (written[2] == 1).any()
    rows = (tmp_path / "labels.objects.csv").read_text().splitlines()
    assert rows == ["obj_id,name", "1,nucleus"]
