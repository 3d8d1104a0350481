"""Many small stacks on Dask: wall time of one worker process against two, on this machine.

    .venv/bin/python benchmarks/batch_benchmark.py [--stacks 8] [--frames 6] [--size 512]
        [--shape 256 256] [--checkpoint PATH]

Writes ``--stacks`` synthetic stacks (a bright disc moving over noise, one click each), then
segments them with :func:`napari_sam2.segment_many`: here without Dask (all cores, one process),
on a LocalCluster of 1 worker with every core as threads, and of 2 workers sharing the cores.
Each configuration's time covers what a user waits for: the tasks, each worker loading the model
once, writing the labels; not the cluster's start (printed apart). The labels of every
configuration must be identical. Without --checkpoint a random-weight checkpoint in the official
format is made (the speed does not depend on the weights). Runs by hand, not in the tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # official.py: seeded random weights


def make_stacks(folder: Path, n: int, frames: int, shape) -> list[Path]:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    radius = min(shape) // 8
    stacks = []
    for i in range(n):
        r0, c0 = shape[0] // 2 + rng.integers(-10, 10), shape[1] // 4
        data = []
        for t in range(frames):
            disc = (rows - r0) ** 2 + (cols - c0 - 4 * t) ** 2 < radius**2
            data.append(500 + 2500 * disc + rng.normal(0, 80, shape))
        path = folder / f"stack{i:02d}.tif"
        tifffile.imwrite(path, np.clip(data, 0, None).astype(np.uint16), photometric="minisblack")
        (folder / f"stack{i:02d}.csv").write_text(f"frame,obj_id,row,col\n0,1,{r0},{c0}\n")
        stacks.append(path)
    return stacks


def random_checkpoint(path: Path) -> Path:
    import torch
    from official import randomize_

    from napari_sam2.model import CONFIGS, SAM2Model

    model = randomize_(SAM2Model(CONFIGS["sam2.1_hiera_tiny"]), seed=2)
    torch.save({"model": model.state_dict()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=8)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--size", type=int, default=512, help="the network's input size")
    parser.add_argument("--shape", type=int, nargs=2, default=(256, 256))
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    import napari_sam2 as ns

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stacks = make_stacks(folder, args.stacks, args.frames, tuple(args.shape))
        ckpt = args.checkpoint or random_checkpoint(folder / "sam2.1_hiera_tiny.pt")
        common = dict(prompts=folder, checkpoint=ckpt, image_size=args.size, progress=False)
        print(
            f"{args.stacks} stacks x {args.frames} frames of {args.shape[0]}x{args.shape[1]}, "
            f"input {args.size}, {cores} cores"
        )

        def timed(name, client=None):
            out = folder / name
            started = time.perf_counter()
            report = ns.segment_many(stacks, out_dir=out, client=client, device="cpu", **common)
            seconds = time.perf_counter() - started
            assert report.ok, report.failed
            return seconds, {p.name: tifffile.imread(p) for p in sorted(out.iterdir())}

        results = {"here": timed("here")}
        for workers in (1, 2):
            started = time.perf_counter()
            with (
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=max(1, cores // workers),
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=":0",
                    silence_logs=logging.ERROR,
                ) as cluster,
                Client(cluster) as client,
            ):
                start = time.perf_counter() - started
                print(f"  cluster of {workers} worker(s) started in {start:.1f} s (not counted)")
                results[f"{workers} worker(s)"] = timed(f"w{workers}", client)
        reference = results["here"][1]
        for name, (_, labels) in results.items():
            for stack, volume in reference.items():
                np.testing.assert_array_equal(labels[stack], volume, err_msg=f"{name} {stack}")
        print(f"{'run':<14} {'wall s':>8} {'s/stack':>8}")
        for name, (seconds, _) in results.items():
            print(f"{name:<14} {seconds:8.1f} {seconds / args.stacks:8.2f}")
        one, two = results["1 worker(s)"][0], results["2 worker(s)"][0]
        print(f"1 worker / 2 workers wall time: {one / two:.2f} (labels identical in all runs)")


if __name__ == "__main__":
    main()
