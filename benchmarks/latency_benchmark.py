"""Interactive latency through the widget's own code path: a click on a slice whose embedding
is ready, until its mask is on screen; and moving to a new slice, then clicking there at once,
until that mask is on screen.

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" \\
        .venv/bin/python benchmarks/latency_benchmark.py [--image-size 1024] [--size 1024]
        [--clicks 20] [--slices 5] [--dwell 5] [--prefetch both|on|off|none]

A real napari window (under Xvfb) with the dock widget, ``sam2.1_hiera_tiny`` with random
weights (no download; the figures are times, not segmentation quality) on the CPU, a
(slices, size, size) uint16 stack of bright discs. A click is what napari's add-point handler
does (``points.add``), run from the Qt event loop; "on screen" is the first paint of napari's
canvas after the widget wrote the mask into *SAM2 labels*. With ``--prefetch``, the slice
change is measured with the widget embedding the neighbouring slices in the background
(``on``), without (``off``), both (the default), or as the widget is set (``none``); the
same clicks on the engine alone (no Qt) say what the widget adds. The user waits ``--dwell``
seconds on a slice before moving on (time to look at it). With ``--corrections N`` (engine
alone), N correction clicks on a slice that a propagation tracked, one after another (the first
conditions the object on its memory; the next ones on the same slice reuse that). Runs by hand,
not in the tests; figures in docs/troubleshooting.md#speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_stack(slices: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:size, :size]
    data = rng.normal(400, 40, (slices, size, size)).clip(0).astype(np.uint16)
    for t in range(slices):
        for r, c in [(0.3, 0.3), (0.3, 0.7), (0.7, 0.3), (0.7, 0.7)]:
            disc = (rr - r * size - 2 * t) ** 2 + (cc - c * size) ** 2 < (size / 12) ** 2
            data[t][disc] = 3000
    return data


class Clock:
    """When the widget last wrote a result, and when napari's canvas painted after it."""

    def __init__(self, viewer, widget) -> None:
        from qtpy.QtWidgets import QApplication

        self.app = QApplication.instance()
        self.widget = widget
        self.written: float | None = None
        self.painted: float | None = None
        write = widget.write_result

        def timed_write(*args, **kwargs):
            out = write(*args, **kwargs)
            self.written = time.perf_counter()
            return out

        widget.write_result = timed_write
        canvas = viewer.window._qt_viewer.canvas
        scene = getattr(canvas, "_scene_canvas", canvas)
        scene.events.draw.connect(self._on_draw)

    def _on_draw(self, _event) -> None:
        if self.written is not None and self.painted is None:
            self.painted = time.perf_counter()

    def reset(self) -> None:
        self.written = self.painted = None

    def pump(self, until, timeout: float = 120.0) -> None:
        """Run the Qt event loop as napari does (sleeping until an event comes, not spinning:
        a busy loop here would take the GIL from the widget's workers) until ``until()``."""
        from qtpy.QtCore import QEventLoop, QTimer

        end = time.perf_counter() + timeout
        tick = QTimer()  # wakes the loop every 2 ms to look at ``until`` again
        tick.start(2)
        try:
            while not until():
                if time.perf_counter() > end:
                    raise TimeoutError("the widget did not answer in time")
                self.app.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
        finally:
            tick.stop()

    def idle(self) -> None:
        self.pump(lambda: not self.widget.busy)
        for _ in range(5):
            self.app.processEvents()
        self.pump(lambda: not self.widget.busy)

    def answer(self, action) -> tuple[float, float]:
        """Run ``action`` and return (ms until written, ms until painted)."""
        self.reset()
        t0 = time.perf_counter()
        action()
        self.pump(lambda: self.painted is not None)
        return (self.written - t0) * 1000, (self.painted - t0) * 1000


def _percentiles(values) -> str:
    v = np.asarray(values)
    return f"p50 {np.percentile(v, 50):6.0f} ms   p95 {np.percentile(v, 95):6.0f} ms"


def run(args, prefetch: bool | None):
    import napari
    from official import random_tiny

    from napari_sam2._qt.widget import SAM2Widget

    model = random_tiny(args.image_size, seed=4, object_bias=5.0)
    data = make_stack(args.slices + 1, args.size)
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1500, 950)
    image = viewer.add_image(data, name="cells")
    viewer.dims.set_current_step(0, 0)
    widget = SAM2Widget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM 2")
    if prefetch is not None:
        widget.ahead.value = prefetch
    clock = Clock(viewer, widget)
    engine = EngineClicks(model, data)
    widget.use_model(model, image)
    clock.idle()  # slice 0 embedded in the background (as after Start)
    size = args.size
    spots = [(0.3, 0.3), (0.3, 0.7), (0.7, 0.3), (0.7, 0.7)]

    # 1. Clicks with the embedding ready: each click replaces the previous one of object 1.
    written, painted = [], []
    for i in range(args.clicks + 1):
        r, c = spots[i % len(spots)]
        if len(widget.points.data):
            widget.points.data = np.zeros((0, 3))
            clock.idle()
        w, p = clock.answer(lambda r=r, c=c: widget.points.add([[0, r * size, c * size]]))
        clock.idle()
        engine.click(r * size, c * size)
        if i:  # the first click pays for napari's first paint of the labels
            written.append(w)
            painted.append(p)
    engine.session.close()

    # 2. Moving to the next slice after looking at this one for ``dwell`` s, clicking at once.
    moves = []
    for k in range(1, args.slices + 1):
        t_end = time.perf_counter() + args.dwell
        clock.pump(lambda t_end=t_end: time.perf_counter() > t_end)

        def move_and_click(k=k):
            viewer.dims.set_current_step(0, k)
            widget.points.add([[k, 0.3 * size, 0.3 * size]])

        moves.append(clock.answer(move_and_click)[1])
        clock.idle()
    viewer.close()
    return written, painted, moves, engine.times[1:]


class EngineClicks:
    """The same clicks on the engine alone (a second PromptSession on the same model and data,
    no Qt: sync_frame and the labels resolved), interleaved with the widget's so that both see
    the same load: what the widget adds is the difference."""

    def __init__(self, model, data) -> None:
        from napari_sam2.engine.session import PromptSession

        self.session = PromptSession(model, data)
        self.session.embed(0)
        self.times: list[float] = []

    def click(self, row: float, col: float) -> None:
        from napari_sam2.engine.labels import result_labels
        from napari_sam2.engine.session import PointRow

        t0 = time.perf_counter()
        out = self.session.sync_frame(0, [PointRow(1, 0, row, col, True)], [])
        result_labels(out.result, np.uint16)
        self.times.append((time.perf_counter() - t0) * 1000)


def corrections(args) -> list[float]:
    """ms of each of ``--corrections`` clicks on slice 2 after propagating slices 0..3 from a
    click on slice 0 (engine alone)."""
    from official import random_tiny

    from napari_sam2.engine.labels import result_labels
    from napari_sam2.engine.session import PointRow, PromptSession

    model = random_tiny(args.image_size, seed=4, object_bias=5.0)
    size = args.size
    session = PromptSession(model, make_stack(4, size))
    session.sync_frame(0, [PointRow(1, 0, 0.3 * size, 0.3 * size, True)], [])
    for _ in session.propagate("forward", 0, 3):
        pass
    times = []
    for k in range(args.corrections):
        t0 = time.perf_counter()
        click = PointRow(1, 2, 0.3 * size + 2 * k, 0.3 * size, True)
        result_labels(session.sync_frame(2, [click], []).result, np.uint16)
        times.append((time.perf_counter() - t0) * 1000)
    session.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--size", type=int, default=1024, help="slice side in pixels")
    ap.add_argument("--clicks", type=int, default=20, help="0: no widget runs")
    ap.add_argument("--slices", type=int, default=5, help="slice changes measured")
    ap.add_argument("--dwell", type=float, default=5.0, help="seconds on a slice before moving")
    ap.add_argument("--prefetch", choices=["both", "on", "off", "none"], default="both")
    ap.add_argument("--corrections", type=int, default=0, help="correction clicks (engine)")
    args = ap.parse_args()
    import torch

    print(
        f"sam2.1_hiera_tiny, random weights, input {args.image_size}², slices "
        f"{args.size}×{args.size} uint16, CPU ({torch.get_num_threads()} threads)"
    )
    choices = {"both": [False, True], "on": [True], "off": [False], "none": [None]}
    if args.corrections:
        times = corrections(args)
        print(
            f"correction clicks on a propagated slice, engine alone (ms): first {times[0]:.0f}, "
            "then " + ", ".join(f"{t:.0f}" for t in times[1:])
        )
    if not args.clicks:  # --clicks 0: the corrections only
        return
    for prefetch in choices[args.prefetch]:
        written, painted, moves, engine = run(args, prefetch)
        name = {None: "", False: " (neighbours not prefetched)", True: " (neighbours prefetched)"}
        print(f"--- widget{name[prefetch]}")
        print(f"engine alone, click -> labels ({len(engine)}):  {_percentiles(engine)}")
        print(f"click -> mask written ({len(written)} clicks): {_percentiles(written)}")
        print(f"click -> mask on screen:               {_percentiles(painted)}")
        print(
            f"move to the next slice after {args.dwell:.0f} s, click at once -> mask on screen "
            f"({len(moves)} moves): {_percentiles(moves)}; each: "
            + ", ".join(f"{m:.0f}" for m in moves)
        )


if __name__ == "__main__":
    main()
