"""Training data: stacks or images with their label images, read lazily and checked up front.

A *source* pairs an image or stack (any file ``segment`` reads: TIFF / OME-TIFF, ``.npy``, zarr /
OME-Zarr, or an array) with a label image or volume of the same frames; every non-zero label id
is an object. Frames go through the inference preprocessing (:mod:`napari_sam2.engine.preprocess`,
one intensity window per stack), labels are resized to the input size by nearest neighbour.

Samples: a single image gives an *image sample* (its objects, the image path of SAM 2); a stack
gives *clips* of K consecutive frames along the tracked axis, with the objects present on the
clip's first frame (the memory path). Validation holds out a fraction of the objects (an object of
a stack on all of its frames): they are never prompted in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.preprocess import IntensityWindow, prepare_video_frame
from ..io import InputError
from ..io.stacks import STACK_SUFFIXES, open_stack, stack_stem

MIN_MASK_PIXELS = 4.0  # an object must cover this many pixels of the decoder's mask grid
MAX_OBJECTS = 3  # objects per sample (the fine-tuning configuration's max_num_objects)
_SHOWN = 5


@dataclass
class Source:
    """One image or stack and its labels: ``frames`` (T, H, W[, C]) and ``labels`` (T, H, W)
    integers, both indexable by frame (lazy)."""

    name: str
    frames: object
    labels: object
    window: IntensityWindow | None = None
    objects: dict[int, list[int]] = field(default_factory=dict)  # frame -> ids present

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class Sample:
    """What one training step sees: ``frames`` of ``source`` (one for an image, K for a clip)
    and the object ids to prompt."""

    source: int
    frames: tuple[int, ...]
    ids: tuple[int, ...]


def _frames_of(data) -> object:
    """An array (H, W[, C]) or (T, H, W[, C]) as frames (T, ...)."""
    return data[None] if data.ndim == 2 or (data.ndim == 3 and data.shape[-1] <= 4) else data


def open_sources(
    stacks, labels, *, axis: int | None = None, index: int | None = None
) -> list[Source]:
    """Pair ``stacks`` (paths or arrays) with ``labels``: a list of the same length, one path
    or array; or a folder holding ``<stack name>.tif`` / ``.npy`` / ``.zarr`` per stack."""
    stacks = list(stacks) if isinstance(stacks, (list, tuple)) else [stacks]
    if not stacks:
        raise InputError("no training data: give at least one image or stack")
    if isinstance(labels, (list, tuple)):
        if len(labels) != len(stacks):
            raise InputError(
                f"{len(stacks)} stacks but {len(labels)} label files: give one label file per "
                "stack, or a folder of <stack name>.tif/.npy/.zarr"
            )
        label_items = list(labels)
    elif (
        isinstance(labels, (str, os.PathLike))
        and Path(labels).is_dir()
        and not str(labels).lower().endswith(".zarr")
    ):
        label_items = [_label_in_folder(Path(labels), s) for s in stacks]
    else:
        if len(stacks) != 1:
            raise InputError(
                f"one label file for {len(stacks)} stacks: give a folder of "
                "<stack name>.tif/.npy/.zarr, one per stack"
            )
        label_items = [labels]
    sources = []
    for i, (stack, label) in enumerate(zip(stacks, label_items)):
        if isinstance(stack, (str, os.PathLike)):
            opened = open_stack(stack, axis=axis, index=index)
            frames, name = opened.frames, str(stack)
        else:
            frames, name = _frames_of(np.asarray(stack)), f"array {i}"
        if isinstance(label, (str, os.PathLike)):
            lab = open_stack(label).frames
            label_name = str(label)
        else:
            lab, label_name = _frames_of(np.asarray(label)), f"labels {i}"
        if tuple(lab.shape[:3]) != tuple(frames.shape[:3]) or len(lab.shape) != 3:
            raise InputError(
                f"{label_name} has shape {tuple(lab.shape)}, which does not fit {name} "
                f"(frames {tuple(frames.shape[:3])}): labels need one (H, W) integer image per "
                "frame of the stack"
            )
        if not np.issubdtype(np.dtype(lab.dtype), np.integer) and lab.dtype != np.bool_:
            raise InputError(
                f"{label_name}: labels hold integer object ids (0 = background), got dtype "
                f"{lab.dtype}"
            )
        sources.append(Source(name, frames, lab))
    return sources


def _label_in_folder(folder: Path, stack) -> Path:
    if not isinstance(stack, (str, os.PathLike)):
        raise InputError("a folder of labels needs stacks given as files (their names match)")
    stem = stack_stem(stack)
    for suffix in STACK_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    raise InputError(
        f"no labels for {stack} in {folder}: expected {stem}.tif, {stem}.npy or {stem}.zarr"
    )


def check_sources(sources: list[Source], image_size: int) -> None:
    """Read every label frame once and every image frame's values: raise :class:`InputError`
    naming what is wrong (NaN or infinite frames, no object at all, objects too small for the
    mask resolution at ``image_size``). Fills ``objects`` and the intensity windows."""
    tiny, total = [], 0
    low_res = image_size // 4  # the decoder's mask grid at this input size
    for src in sources:
        src.objects.clear()
        for t in range(src.num_frames):
            lab = np.asarray(src.labels[t])
            ids, areas = np.unique(lab[lab > 0], return_counts=True)
            if ids.size:
                src.objects[t] = [int(i) for i in ids]
            total += ids.size
            h, w = lab.shape
            scale = (low_res / h) * (low_res / w)
            for i, a in zip(ids, areas):
                if a * scale < MIN_MASK_PIXELS:
                    tiny.append(f"{src.name} frame {t} id {int(i)} ({int(a)} px)")
        step = max(1, src.num_frames // 64)
        sample = np.stack([np.asarray(src.frames[t]) for t in range(0, src.num_frames, step)])
        if np.issubdtype(sample.dtype, np.floating):
            for t in range(src.num_frames):
                if not np.isfinite(np.asarray(src.frames[t])).all():
                    raise InputError(
                        f"{src.name}: frame {t} holds NaN or infinite values; replace them "
                        "(e.g. np.nan_to_num) or leave that frame out"
                    )
        if sample.dtype != np.uint8:
            src.window = IntensityWindow.from_percentiles(sample)
    if total == 0:
        raise InputError(
            "no object to learn from: every label image is all 0 (background); paint or load "
            "the objects' labels (ids > 0) first"
        )
    if tiny:
        more = f" (+{len(tiny) - _SHOWN} more)" if len(tiny) > _SHOWN else ""
        raise InputError(
            f"{len(tiny)} object(s) too small for the model's mask resolution at input "
            f"{image_size} (each must cover {MIN_MASK_PIXELS:g} pixels of its "
            f"{low_res}x{low_res} mask grid): {', '.join(tiny[:_SHOWN])}{more}. Remove them "
            "from the labels or train at a larger --image-size"
        )


def split_objects(sources: list[Source], val_fraction: float, seed: int = 0) -> tuple[set, set]:
    """(training, validation) sets of (source, id). With fewer than two objects in all, nothing
    is held out and validation uses the training objects."""
    every = sorted(
        {(s, i) for s, src in enumerate(sources) for ids in src.objects.values() for i in ids}
    )
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"the validation fraction must lie in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * len(every)))
    if val_fraction > 0 and len(every) >= 2:
        n_val = min(max(n_val, 1), len(every) - 1)
    else:
        n_val = 0
    order = np.random.default_rng(seed).permutation(len(every))
    val = {every[k] for k in order[:n_val]}
    return set(every) - val, val or set(every)


def make_samples(sources: list[Source], keep: set, clip_frames: int) -> list[Sample]:
    """Every image sample and every clip start with an object of ``keep`` on its first frame."""
    samples = []
    for s, src in enumerate(sources):
        k = 1 if src.num_frames == 1 else min(clip_frames, src.num_frames)
        for t in range(src.num_frames - k + 1):
            ids = tuple(i for i in src.objects.get(t, []) if (s, i) in keep)
            if ids:
                samples.append(Sample(s, tuple(range(t, t + k)), ids))
    return samples


def load_sample(
    sources: list[Source], sample: Sample, image_size: int, ids: tuple[int, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 3, S, S) model input and (K, B, S, S) bool masks of the sample's objects."""
    src = sources[sample.source]
    ids = sample.ids if ids is None else ids
    images, masks = [], []
    for t in sample.frames:
        images.append(
            prepare_video_frame(np.asarray(src.frames[t]), image_size=image_size, window=src.window)
        )
        if not ids:
            continue
        lab = torch.from_numpy(np.asarray(src.labels[t]).astype(np.int64))
        per_object = torch.stack([lab == i for i in ids]).float()[None]  # (1, B, H, W)
        resized = F.interpolate(per_object, size=(image_size, image_size), mode="nearest")
        masks.append(resized[0] > 0.5)
    masks = torch.stack(masks) if masks else torch.zeros(len(images), 0, image_size, image_size)
    return torch.cat(images), masks.bool()


def pick_objects(sample: Sample, rng: np.random.Generator, limit: int = MAX_OBJECTS):
    """At most ``limit`` of the sample's objects, drawn at random."""
    if len(sample.ids) <= limit:
        return sample.ids
    chosen = rng.choice(len(sample.ids), limit, replace=False)
    return tuple(sample.ids[int(k)] for k in sorted(chosen))
