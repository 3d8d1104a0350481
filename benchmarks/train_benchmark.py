"""Training benchmark (run by hand, not a test): seconds per step by mode and input size on
this machine, and the harder case from random weights (4 synthetic images x 5 objects).

    PYTHONPATH=src python benchmarks/train_benchmark.py speed [--sizes 256 512] [--steps 5]
    PYTHONPATH=src python benchmarks/train_benchmark.py random [--steps 600] [--size 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from official import randomize_  # noqa: E402

import napari_sam2 as ns  # noqa: E402
from napari_sam2.model import CONFIGS, SAM2Model  # noqa: E402


def random_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    model = randomize_(SAM2Model(CONFIGS["sam2.1_hiera_tiny"]), seed=3)
    path = folder / "base.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def synthetic(n_images: int, n_objects: int, side: int = 256, seed: int = 0):
    """Grey images with ``n_objects`` discs of random size and brightness on noise."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:side, :side]
    images, labels = [], []
    for _ in range(n_images):
        image = rng.integers(0, 60, (side, side)).astype(np.uint8)
        label = np.zeros((side, side), np.uint8)
        for k in range(n_objects):
            r, c, rad = (
                rng.integers(30, side - 30),
                rng.integers(30, side - 30),
                rng.integers(12, 28),
            )
            disc = ((rr - r) ** 2 + (cc - c) ** 2 < rad**2) & (label == 0)
            image[disc] = rng.integers(120, 250)
            label[disc] = k + 1
        images.append(image)
        labels.append(label)
    return images, labels


def speed(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = random_checkpoint(Path(tmp))
        images, labels = synthetic(2, 3)
        stack = np.stack(synthetic(8, 2, seed=1)[0])
        stack_labels = np.stack(synthetic(8, 2, seed=1)[1])
        for size in args.sizes:
            for mode, lora, data in (
                ("decoder", None, "images"),
                ("decoder", 8, "images"),
                ("all", None, "images"),
                ("memory", None, "stack"),
            ):
                x, y = (images, labels) if data == "images" else ([stack], [stack_labels])
                times = []
                last = [time.perf_counter()]

                def tick(step, steps, loss, val, times=times, last=last):
                    now = time.perf_counter()
                    times.append(now - last[0])
                    last[0] = now

                ns.train(
                    x,
                    y,
                    Path(tmp) / "o.pt",
                    checkpoint=base,
                    image_size=size,
                    steps=args.steps,
                    train=mode,
                    lora=lora,
                    clip_frames=8,
                    val_fraction=0.0,
                    val_every=10**9,
                    overwrite=True,
                    device="cpu",
                    progress=tick,
                )
                label = f"{mode}{'+lora' + str(lora) if lora else ''} ({data})"
                print(f"{size:5d}  {label:24s} {np.median(times[1:]):6.2f} s/step", flush=True)


def from_random(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = random_checkpoint(Path(tmp))
        images, labels = synthetic(4, 5, side=args.size)
        for mode, lora, lr in (("decoder", None, 1e-3), ("decoder", 8, 1e-3), ("all", None, 1e-4)):
            t = time.perf_counter()
            r = ns.train(
                images,
                labels,
                Path(tmp) / "o.pt",
                checkpoint=base,
                image_size=args.size,
                steps=args.steps,
                train=mode,
                lora=lora,
                lr=lr,
                val_fraction=0.0,
                val_every=100,
                overwrite=True,
                device="cpu",
            )
            curve = ", ".join(f"{v['step']}: {v['one_click_iou']:.2f}" for v in r.val_history)
            print(
                f"{mode}{'+lora' if lora else ''} lr {lr:g}: {curve} "
                f"({time.perf_counter() - t:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("speed", "random"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    (speed if args.what == "speed" else from_random)(args)
