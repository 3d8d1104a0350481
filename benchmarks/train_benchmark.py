"""Training benchmark (run by hand, not a test): seconds per step by mode and input size on
this machine, the harder case from random weights (4 synthetic images x 5 objects), and
generalisation on the sample time-lapse (train on some frames and objects, measure on the others).

    PYTHONPATH=src python benchmarks/train_benchmark.py speed [--sizes 256 512] [--steps 5]
    PYTHONPATH=src python benchmarks/train_benchmark.py random [--steps 600] [--size 256]
        [--modes decoder lora all] [--lr 1e-3] [--val-every 50]
        [--base CKPT] [--save DIR] [--data-seed 0]
    PYTHONPATH=src python benchmarks/train_benchmark.py timelapse [--steps 150] [--size 256]
        [--modes decoder] [--lr 1e-3] [--clip-frames 4]
    PYTHONPATH=src python benchmarks/train_benchmark.py rss --sizes 256 512 1024 [--steps 3]

Everything runs on one thread (``torch.set_num_threads(1)``; also set ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from official import randomize_  # noqa: E402

import napari_sam2 as ns  # noqa: E402
from napari_sam2 import _sample_data as sample  # noqa: E402
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


MODES = {"decoder": ("decoder", None), "lora": ("decoder", 8), "all": ("all", None)}
RANDOM_LR = {"decoder": 1e-3, "lora": 1e-3, "all": 1e-4}


def report_every(name: str, every: int):
    """A progress callback printing the step, loss and latest validation IoU every ``every``
    steps (so a run cut short still leaves its curve in the output)."""
    start = time.perf_counter()

    def tick(step, steps, loss, val):
        if step % every == 0:
            shown = "-" if val is None else f"{val:.2f}"
            print(
                f"  {name} step {step}/{steps}: loss {loss:.3f}, latest IoU {shown} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )

    return tick


def curve(report) -> str:
    return ", ".join(f"{v['step']}: {v['one_click_iou']:.2f}" for v in report.val_history)


def from_random(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base if args.base is not None else random_checkpoint(Path(tmp))
        images, labels = synthetic(4, 5, side=args.size, seed=args.data_seed)
        for name in args.modes:
            mode, lora = MODES[name]
            lr = args.lr if args.lr is not None else RANDOM_LR[name]
            t = time.perf_counter()
            folder = args.save if args.save is not None else Path(tmp)
            r = ns.train(
                images,
                labels,
                folder / f"{name}.pt",
                checkpoint=base,
                image_size=args.size,
                steps=args.steps,
                train=mode,
                lora=lora,
                lr=lr,
                val_fraction=0.0,
                val_every=args.val_every,
                overwrite=True,
                device="cpu",
                progress=report_every(name, args.val_every),
            )
            print(
                f"{name} lr {lr:g}: one-click IoU by step {curve(r)} "
                f"({time.perf_counter() - t:.0f} s)",
                flush=True,
            )


def timelapse_labels(n_frames: int = 24, shape=(192, 256), n_cells: int = 5, seed: int = 0):
    """The sample time-lapse (``make_sample_timelapse``) and its ground truth: each cell's
    half-maximum extent (its rendered edge), later cells on top where two overlap."""
    frames = sample.synthetic_cells(n_frames=n_frames, shape=shape, n_cells=n_cells, seed=seed)
    rng = np.random.default_rng(seed)  # the same draws as synthetic_cells
    cells = []
    for _ in range(n_cells):
        for _attempt in range(50):
            cell = sample._random_cell(rng, *shape, n_frames)
            if all(sample._apart(cell, other) for other in cells):
                break
        cells.append(cell)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    labels = np.zeros(frames.shape, np.uint8)
    for t in range(n_frames):
        for k, cell in enumerate(cells):
            flat = dataclasses.replace(cell, brightness=1.0, texture_waves=np.zeros((0, 4)))
            inside = sample._render_cell(flat, t, n_frames, rows, cols, *shape) > 0.5
            labels[t][inside] = k + 1
    return frames, labels


def measure(checkpoint, frames, labels, size, clip_frames, tmp) -> dict:
    """One-click and tracking IoU of ``checkpoint`` on every object of ``labels`` (a run of one
    step: its validation before training is the measurement)."""
    r = ns.train(
        [frames],
        [labels],
        Path(tmp) / "m.pt",
        checkpoint=checkpoint,
        image_size=size,
        steps=1,
        clip_frames=clip_frames,
        val_fraction=0.0,
        overwrite=True,
        device="cpu",
    )
    return r.val_before


def timelapse(args) -> None:
    frames, labels = timelapse_labels()
    split = 16  # train on frames 0-15, measure on frames 16-23
    with tempfile.TemporaryDirectory() as tmp:
        base = random_checkpoint(Path(tmp))
        for name in args.modes:
            mode, lora = MODES[name]
            lr = args.lr if args.lr is not None else RANDOM_LR[name]
            t = time.perf_counter()
            out = Path(tmp) / f"{name}.pt"
            r = ns.train(
                [frames[:split]],
                [labels[:split]],
                out,
                checkpoint=base,
                image_size=args.size,
                steps=args.steps,
                train=mode,
                lora=lora,
                lr=lr,
                clip_frames=args.clip_frames,
                val_fraction=0.4,
                val_every=args.val_every,
                overwrite=True,
                device="cpu",
                progress=report_every(name, args.val_every),
            )
            seconds = time.perf_counter() - t
            held = sorted(i for _, i in json_objects(out))
            trained_ids = [i for i in range(1, 6) if i not in held]
            print(f"{name} lr {lr:g}, {args.steps} steps ({seconds:.0f} s), held-out ids {held}")
            print(f"  held-out objects, training frames, by step: {curve(r)}")
            for what, ids in (("held-out objects", held), ("training objects", trained_ids)):
                lab = np.where(np.isin(labels[split:], ids), labels[split:], 0)
                for tag, ckpt in (("before", base), ("after", out)):
                    v = measure(ckpt, frames[split:], lab, args.size, args.clip_frames, tmp)
                    print(
                        f"  {what}, held-out frames {split}-{len(frames) - 1}, {tag}: one-click "
                        f"{v['one_click_iou']:.2f}, tracking {v['tracking_iou']:.2f}",
                        flush=True,
                    )


def json_objects(out: Path):
    import json

    return json.loads(out.with_suffix(".json").read_text())["validation"]["objects"]


def rss(args) -> None:
    """Seconds per step and peak RSS per input size, each size in a fresh process."""
    if len(args.sizes) > 1:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "rss", "--sizes", str(size), "--modes", *args.modes]
            cmd += ["--steps", str(args.steps), "--clip-frames", str(args.clip_frames)]
            subprocess.run(cmd, check=True)
        return
    size = args.sizes[0]
    frames, labels = timelapse_labels()
    name = args.modes[0]
    mode, lora = MODES[name]
    with tempfile.TemporaryDirectory() as tmp:
        base = random_checkpoint(Path(tmp))
        times, last = [], [time.perf_counter()]

        def tick(step, steps, loss, val):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        ns.train(
            [frames[:16]],
            [labels[:16]],
            Path(tmp) / "o.pt",
            checkpoint=base,
            image_size=size,
            steps=args.steps,
            train=mode,
            lora=lora,
            clip_frames=args.clip_frames,
            val_fraction=0.0,
            val_every=10**9,
            overwrite=True,
            device="cpu",
            progress=tick,
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(
        f"{size:5d}  {name} ({args.clip_frames}-frame clips of the time-lapse): "
        f"{np.median(times[1:]):6.2f} s/step (first {times[0]:.1f} s), peak RSS {peak:.2f} GiB",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("speed", "random", "timelapse", "rss"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES))
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--clip-frames", type=int, default=4)
    parser.add_argument(
        "--base", type=Path, default=None, help="random: start from this checkpoint, not random"
    )
    parser.add_argument(
        "--save", type=Path, default=None, help="random: keep each mode's result as DIR/MODE.pt"
    )
    parser.add_argument("--data-seed", type=int, default=0, help="random: the images' seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"speed": speed, "random": from_random, "timelapse": timelapse, "rss": rss}[args.what](args)
