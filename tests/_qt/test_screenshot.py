"""A real viewer window on the (virtual) screen: open the sample stack, dock the widget, click,
propagate, and take a screenshot of the whole window. Set NAPARI_SAM2_SCREENSHOT=path to keep
the picture (docs/images/widget.png was made this way)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_sam2._qt.widget import SAM2Widget
from napari_sam2._sample_data import make_sample_stack
from napari_sam2.model import CONFIGS, SAM2Model

pytestmark = pytest.mark.display


def test_widget_in_a_real_window(make_napari_viewer, qtbot, tmp_path):
    from official import randomize_

    torch.manual_seed(0)
    model = randomize_(SAM2Model(CONFIGS["sam2.1_hiera_tiny"].with_image_size(256)), seed=4)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias += 5.0

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    ((data, meta, _),) = make_sample_stack()
    image = viewer.add_image(data, **meta)
    widget = SAM2Widget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM 2", area="right")
    widget.use_model(model.eval(), image)
    viewer.dims.set_point(0, 8 * 4.0)  # world coordinate of slice 8 (z scale 4)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    widget.points.add([[8, 96, 128]])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    widget.direction.value = "forward"
    widget.last.value = 12
    widget.propagate()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    viewer.reset_view()
    qtbot.wait(300)

    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 300 and shot.shape[1] > 500
    assert len(np.unique(shot.reshape(-1, shot.shape[-1]), axis=0)) > 50  # not a blank window
    labels = widget.labels_layer.data
    assert all((labels[t] == 1).any() for t in range(8, 13))
    target = os.environ.get("NAPARI_SAM2_SCREENSHOT")
    if target:
        from skimage.io import imsave

        imsave(target, shot)

    # A long message must wrap, not widen the dock and squeeze the canvas (a 1500x950 window).
    window = viewer.window._qt_window.width()
    widget.feedback.done(
        "Propagated over 5 slices. " + "This status line is long on purpose, as errors about "
        "files with long paths are: /a/very/long/path/to/a/folder/of/stacks/and/prompts. " * 3
    )
    qtbot.wait(300)
    canvas = viewer.window._qt_viewer.canvas.native.width()
    assert viewer.window._qt_window.width() == window
    assert canvas >= window / 2, f"canvas {canvas} px of a {window} px window"
