"""The widget's *Train* tab: fine-tune the session's model on the user's own annotations (the
data engine of SAM 2: annotate, train, propagate better, correct less, train again).

The training data are the session's labelled slices (the slices prompted with clicks, boxes or
painted masks, and, if chosen, the propagated ones the user has looked over), as they are now
in *SAM2 labels*, and any Labels layers picked here with the image layer of their shape.
Consecutive labelled slices go in as one stack (clips train the memory), single ones as images.
Training is :func:`napari_sam2.train.train` in a worker: one long task at a time with the
widget's progress bar and this tab's Cancel (``propagation.py``'s task check). When it ends the
file is kept in the weights cache as ``<model>-finetuned-<date>.pt`` with its JSON sidecar, shown
in Start → checkpoint, and the session restarts on it (its embeddings are recomputed: their
signature holds a hash of the weights). Cancel leaves the model in use as it was and keeps the
run's resumable state: the next Train with the same options continues it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from magicgui.widgets import ComboBox, Label, LineEdit, PushButton, Select, SpinBox
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from ..train import DEFAULT_LR, TRAIN_MODES, state_path, train
from ..train.save import DiskFullError
from ..weights import CACHE_ENV, cached_path, get_cache_dir
from . import session_io
from .prompting import META

if TYPE_CHECKING:
    from .widget import SAM2Widget

DEFAULT_STEPS = inspect.signature(train).parameters["steps"].default
SLICES = [("prompted and painted", "prompted"), ("+ propagated slices", "all")]


def _import_dynamo(device) -> None:
    """Import ``torch._dynamo`` (AdamW does, on first use) here, on the main thread. It loads
    triton where installed, whose LLVM clashes with the one of Mesa's OpenGL drivers napari
    runs on (a segmentation fault, seen under xvfb): off CUDA, where triton is of no use,
    triton is kept out of that import (torch then notes it as absent for this process)."""
    if "torch._dynamo" in sys.modules or "triton" in sys.modules:
        return
    blocked = torch.device(device).type != "cuda"
    if blocked:
        sys.modules["triton"] = None  # `import triton` raises ImportError meanwhile
    try:
        importlib.import_module("torch._dynamo")
    finally:
        if blocked:
            del sys.modules["triton"]


class TrainingCancelled(Exception):
    """Raised from the training's progress callback when the user presses Cancel."""


@dataclass(frozen=True)
class Stopped:
    step: int
    steps: int
    out: Path


@dataclass(frozen=True)
class NoRoom:
    """A run stopped by a full disk: ``reason`` names the path, the space needed and what is
    free; ``kept``: its resumable state is on disk (the next Train with the same options
    continues it)."""

    reason: str
    out: Path
    kept: bool


def labelled_runs(frames, labels, which) -> tuple[list, list]:
    """Images and label images of the frames ``which`` (those with a label), as arrays: runs
    of consecutive frames as (T, H, W[, C]) stacks, single frames as (H, W[, C]) images."""
    kept = sorted(t for t in which if np.any(np.asarray(labels[t])))
    runs: list[list[int]] = []
    for t in kept:
        if runs and runs[-1][-1] == t - 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    images, masks = [], []
    for run in runs:
        image = np.stack([np.asarray(frames[t]) for t in run])
        label = np.stack([np.asarray(labels[t]) for t in run])
        images.append(image if len(run) > 1 else image[0])
        masks.append(label if len(run) > 1 else label[0])
    return images, masks


class TrainTab:
    """The controls of the Train tab (``widgets``, laid out by the widget) and the training."""

    def __init__(self, widget: SAM2Widget) -> None:
        self.widget = widget
        self.what = ComboBox(label="train", choices=list(TRAIN_MODES), value="decoder")
        self.what.tooltip = (
            "decoder: prompt encoder + mask decoder (fastest); memory: + what propagation uses; "
            "all: the whole network"
        )
        self.lora = SpinBox(label="LoRA rank (0: none)", min=0, max=256, value=0)
        self.lora.tooltip = (
            "LoRA adapters of this rank on the image encoder (with decoder or memory)"
        )
        self.steps = SpinBox(label="steps", min=1, max=1_000_000, value=DEFAULT_STEPS)
        self.lr = LineEdit(label="learning rate", value=f"{DEFAULT_LR['decoder']:g}")
        self.lr.tooltip = "Defaults: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        self.slices = ComboBox(label="session slices", choices=SLICES, value="prompted")
        self.slices.tooltip = (
            "Which slices of SAM2 labels to learn from: those you prompted or painted, or also "
            "the propagated ones (look them over first: errors are learnt too)"
        )
        self.layers = Select(label="also Labels layers", choices=self._label_layers)
        self.layers.tooltip = (
            "Labels layers to learn from too, each with the image layer of its shape; their "
            "slices with labels are used"
        )
        self.layers.native.setMaximumHeight(90)  # a few rows; the dock must fit a laptop
        self.button = PushButton(text="Train on these annotations")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.cancel.tooltip = "Stop after the step in progress; the model in use stays as it is"
        self.figures = Label(value="")
        self.figures.native.setWordWrap(True)
        lines = self.figures.native.fontMetrics().lineSpacing()
        self.figures.native.setMinimumHeight(9 * lines)  # the figures of a run, never clipped
        self.widgets = [self.what, self.lora, self.steps, self.lr, self.slices, self.layers,
                        self.button, self.cancel, self.figures]  # fmt: skip
        self.what.changed.connect(self._default_lr)
        self.lora.changed.connect(self._default_lr)
        self.button.changed.connect(self.start)
        self.cancel.changed.connect(widget.cancel)
        self._stop = threading.Event()
        self._latest: tuple | None = None  # (step, steps, loss, val IoU) from the worker
        self._stopped: tuple | None = None  # (out, options) of a cancelled run, resumable
        self._timer = QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._show_latest)
        self.last_report = None

    def set_enabled(self, on: bool) -> None:
        self.button.enabled = on

    def reset_choices(self) -> None:
        self.layers.reset_choices()

    def _label_layers(self, *_):
        return [
            layer
            for layer in self.widget.viewer.layers
            if isinstance(layer, Labels) and META not in layer.metadata
        ]

    def _default_lr(self, *_) -> None:
        mode = "lora" if self.lora.value else self.what.value
        self.lr.value = f"{DEFAULT_LR[mode]:g}"

    # ------------------------------------------------------------------ data
    def training_data(self) -> tuple[list, list]:
        """The session's labelled slices and the chosen Labels layers, as arrays (read now,
        on the main thread). ValueError naming what is missing."""
        w = self.widget
        frames = w.geometry.frames(session_io.full_resolution(w.image_layer))
        which = set(w.session.tracker.prompted_frames())
        if self.slices.value == "all":
            which |= set(w._labelled)
        stacks, labels = labelled_runs(frames, w.label_view(), which)
        for layer in self.layers.value:
            image = self._image_for(layer)
            data = layer.data[0] if layer.multiscale else layer.data
            pixels = session_io.full_resolution(image)
            if data.ndim == 2:  # one image: a stack of one
                data, pixels = np.asarray(data)[None], np.asarray(pixels)[None]
            more = labelled_runs(pixels, data, range(data.shape[0]))
            if not more[0]:
                raise ValueError(f"The Labels layer '{layer.name}' has no label: paint some first.")
            stacks += more[0]
            labels += more[1]
        if not stacks:
            raise ValueError(
                "Nothing to learn from yet: segment some objects (clicks, boxes or painting) "
                "and correct them, or pick a Labels layer under 'also Labels layers'."
            )
        return stacks, labels

    def _image_for(self, layer: Labels) -> Image:
        """The image layer of ``layer``'s shape (the session's image first)."""
        images = [self.widget.image_layer] + [
            x for x in self.widget.viewer.layers if isinstance(x, Image)
        ]
        shape = tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)
        if len(shape) not in (2, 3):
            raise ValueError(
                f"The Labels layer '{layer.name}' has {len(shape)} dimensions: training takes "
                "2-D labels or a 3-D stack of them."
            )
        for image in images:
            data = session_io.full_resolution(image)
            if tuple(data.shape[: data.ndim - image.rgb]) == shape:
                return image
        raise ValueError(
            f"No image layer has the shape of the Labels layer '{layer.name}' {shape}: open its "
            "image, or unpick it."
        )

    # ------------------------------------------------------------------ the run
    def options(self) -> dict:
        """What to train, from the fields and the session's model. ValueError if unusable."""
        try:
            lr = float(self.lr.value)
        except ValueError:
            lr = -1.0
        if not lr > 0:
            raise ValueError(f"The learning rate must be a number > 0, not '{self.lr.value}'.")
        lora = int(self.lora.value) or None
        if lora and self.what.value == "all":
            raise ValueError("LoRA trains with 'decoder' or 'memory': choose one, or rank 0.")
        model = self.widget.session.tracker.model
        return dict(
            model=model.config.name,
            image_size=int(model.config.image_size),
            steps=int(self.steps.value),
            lr=lr,
            train=self.what.value,
            lora=lora,
            device=model.device,
            precision="bf16" if model.precision == "bf16" else "fp32",
        )

    def output_path(self, name: str) -> Path:
        """A new ``<name>-finetuned-<date>[-n].pt`` in the weights cache."""
        folder = get_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-finetuned-{time.strftime('%Y%m%d')}"
        out, n = folder / f"{stem}.pt", 1
        while out.exists() or state_path(out).exists():
            n += 1
            out = folder / f"{stem}-{n}.pt"
        return out

    def base_weights(self):
        """The weights in use: their file where the session loaded one, else the weights."""
        w = self.widget
        model = w.session.tracker.model
        checkpoint = session_io.session_model(w).checkpoint
        if checkpoint is not None and Path(checkpoint).is_file():
            return checkpoint
        official = [k for k, m in w._models.items() if m is model and k[4] in ("None", "")]
        if official and cached_path(model.config.name).is_file():
            return str(cached_path(model.config.name))
        return model.state_dict()  # (read in the worker; the model is not changed meanwhile)

    def start(self, *_) -> None:
        """Train on the annotations, in a worker (refused while another long task runs)."""
        w = self.widget
        if w.session is None:
            w.feedback.error("Press Start and segment some objects first.")
            return
        if w.refuse_if_busy("training"):
            return
        try:
            options = self.options()
            stacks, labels = self.training_data()
        except ValueError as e:
            w.feedback.error(e)
            return
        resume = False
        if self._stopped is not None and self._stopped[1] == options:
            out = self._stopped[0]
            resume = state_path(out).is_file()
        if not resume:
            out = self.output_path(options["model"])
        _import_dynamo(options["device"])
        self._stop.clear()
        self._latest = None
        if not w.start_progress(options["steps"], "training", cancel=self._stop.set, tab="Train"):
            return
        what = f"{len(stacks)} image(s) or stack(s)"
        w.feedback.say(f"{'Resuming' if resume else 'Training'} on {what}…")
        self.figures.value = "Validating before the first step…"
        self._timer.start()
        w.run(
            self._work,
            stacks,
            labels,
            out,
            self.base_weights(),
            options,
            resume,
            returned=self._returned,
            finished=self._finished,
        )

    def _work(self, stacks, labels, out, base, options, resume):
        """In the worker: train, then load the result as the session's model will use it."""
        import napari_sam2 as ns

        session = self.widget.session

        def progress(step, steps, loss, val_iou):
            self._latest = (step, steps, loss, val_iou)
            if self._stop.is_set() or self.widget.session is not session:  # Cancel, or ended
                raise TrainingCancelled

        if not isinstance(base, (str, Path)):
            base = {k: v.detach().float().cpu() for k, v in base.items()}
        try:
            report = train(
                stacks, labels, out, checkpoint=base, progress=progress, resume=resume,
                overwrite=not resume, **options,
            )  # fmt: skip
        except TrainingCancelled:
            step = self._latest[0] if self._latest else 0
            return Stopped(step, options["steps"], out), options
        except DiskFullError as e:  # what was kept said in the tab's words, not the CLI's
            return NoRoom(e.reason or e.strerror, out, state_path(out).is_file()), options
        model = ns.load_model(
            options["model"],
            checkpoint=out,
            device=options["device"],
            image_size=options["image_size"],
            precision=session.tracker.model.precision,
        )
        return (report, model), options

    def _show_latest(self) -> None:
        if self._latest is None:
            return
        step, steps, loss, val_iou = self._latest
        self.widget.feedback.bar.value = min(step, self.widget.feedback.bar.max)
        iou = "" if val_iou is None else f"\nvalidation IoU {val_iou:.2f}"
        self.figures.value = f"Step {step} of {steps}\nloss {loss:.3f}{iou}"

    def _finished(self) -> None:
        self._timer.stop()
        self.widget.end_progress()

    def _returned(self, result) -> None:
        outcome, options = result
        w = self.widget
        self._show_latest()  # the last step's figures, however short the run
        if isinstance(outcome, Stopped):
            self._stopped = (outcome.out, options)
            self.figures.value += " (stopped)"
            w.feedback.done(
                f"Training stopped after step {outcome.step} of {outcome.steps}: the model in use "
                "is unchanged. Train again with the same options to continue that run."
            )
            return
        if isinstance(outcome, NoRoom):
            self._no_room(outcome, options)
            return
        self._stopped = None
        report, model = outcome
        self.last_report = report
        before = report.val_before["one_click_iou"]
        after = report.val_after["one_click_iou"]
        held = " (on the training objects: too few to hold any out)"
        held = held if report.val_on_training_objects else ""
        where = "on the training objects" if report.val_on_training_objects else ""
        where = where or f"{report.val_after.get('objects', '?')} held-out objects"
        self.figures.value = (
            f"{report.steps} steps in {report.seconds:.0f} s\n"
            f"loss {report.losses[0]:.3f} → {report.losses[-1]:.3f}\n"
            f"one-click IoU {before:.2f} → {after:.2f}\n({where})"
        )
        if w.session is None or w.image_layer is None:
            w.feedback.done(f"Training finished: the model is in {report.path}.")
            return
        note = self.switch(report.path, model, options)
        message = (
            f"Trained: one-click IoU {before:.2f} → {after:.2f}{held}. Segmenting with "
            f"{report.path.name} now (Start → checkpoint){note}; propagate again to use it "
            "everywhere."
        )
        if w._ready_note is not None:  # said once the resumed prompts are synced
            w._ready_note = message
        w.feedback.done(message, notify=True)

    def _no_room(self, outcome: NoRoom, options: dict) -> None:
        """Said plainly, as the command line does: the path, the space needed, what is free,
        and what was kept; the model in use is unchanged."""
        if outcome.kept:
            self._stopped = (outcome.out, options)
            then = (
                "The run is kept: free some space, then Train again with the same options to "
                "continue it (a finished run is only saved, not trained again)."
            )
        else:
            self._stopped = None
            then = "Nothing was trained" if self._latest is None else "Nothing could be kept"
            then += "; the model in use is unchanged."
        if self._latest is None:
            self.figures.value = "Not started: the disk is full"
        else:
            self.figures.value += "\n(not saved: the disk is full)"
        reason = outcome.reason[0].upper() + outcome.reason[1:]
        if "ulimit" not in reason:  # (a file-size limit is not the folder's)
            reason += f" (the tab saves in the weights cache; {CACHE_ENV} chooses its folder)"
        self.widget.feedback.error(f"{reason}. {then}")

    def switch(self, path: Path, model, options: dict) -> str:
        """Restart the session on the trained ``model`` (from ``path``), resuming from its SAM2
        layers; an embeddings store (the old weights') gives way to a temporary one."""
        w = self.widget
        key = (options["model"], options["image_size"], model.precision, bool(model.compiled))
        key = (*key, str(path), w.device.value)
        w._models[key] = model
        w.checkpoint.value = str(path)
        w.model_name.value = options["model"]
        if options["image_size"] in w.input_size.choices:
            w.input_size.value = options["image_size"]
        store = w.embeddings.value
        note = ""
        if store not in (None, "") and str(store) not in ("", "."):
            note = f" (the store {Path(store).name} holds the old model's embeddings: unused)"
            w.embeddings.value = ""  # its signature holds the old weights' hash
        new_labels, w.new_labels.value = w.new_labels.value, False
        try:
            w._begin(w.image_layer, w.geometry, model, key)
        finally:
            w.new_labels.value = new_labels
        return note
