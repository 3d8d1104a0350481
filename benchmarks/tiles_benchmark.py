"""Big images on tiles: seconds per window embedding, segment everything on a large image
tiled (native-resolution windows) against downscaled (the whole image resized to the input),
and seconds per tracked frame of a movie of such images, each object in its window
(WindowTracker) against the whole frame downscaled (VideoTracker).

    .venv/bin/python benchmarks/tiles_benchmark.py [--size 4096] [--image-size 1024]
        [--points-per-side 32] [--model sam2.1_hiera_tiny] [--halo N]
        [--frames 8] [--objects 4] [--only-tracking] [--filters]

Random weights (no download): the figures are times and memory, not segmentation quality. The
image is a synthetic field of small bright discs on noise (uint16). Peak memory is traced
numpy/Python memory (tracemalloc), which the model's own tensors are not part of. Runs by hand,
not in the tests; the reduced runs in docs/big-images.md are
``--size 1024 --image-size 256 --points-per-side 16`` and, for tracking,
``--size 1024 --image-size 256 --frames 8 --objects 4 --only-tracking``. Segment everything
keeps every mask (thresholds 0) unless ``--filters`` (the generator's default thresholds): on
a 4096² image random weights give masks as large as the image, and keeping all of them
untiled would hold gigabytes of records.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(400, 40, (size, size)).clip(0).astype(np.uint16)
    rr, cc = np.mgrid[:size, :size]
    radius = max(3, size // 400)
    for r, c in rng.integers(radius, size - radius, (size * size // 20_000, 2)):
        sl = np.s_[r - radius : r + radius + 1, c - radius : c + radius + 1]
        disc = (rr[sl] - r) ** 2 + (cc[sl] - c) ** 2 <= radius**2
        image[sl][disc] = 3000
    return image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--model", default="sam2.1_hiera_tiny")
    ap.add_argument("--halo", type=int, default=None)
    ap.add_argument("--frames", type=int, default=8, help="frames of the tracked movie")
    ap.add_argument("--objects", type=int, default=4, help="objects tracked")
    ap.add_argument("--only-tracking", action="store_true")
    ap.add_argument("--filters", action="store_true", help="default IoU/stability thresholds")
    args = ap.parse_args()

    from official import randomize_

    import napari_sam2 as ns
    from napari_sam2.engine.tiles import TileGrid, tile_geometry
    from napari_sam2.model import CONFIGS, SAM2Model

    torch.manual_seed(0)
    model = randomize_(SAM2Model(CONFIGS[args.model].with_image_size(args.image_size)), 1).eval()
    image = make_image(args.size)
    tile, halo = tile_geometry(args.image_size, None, args.halo)
    grid = TileGrid(image.shape, tile, halo)
    print(
        f"{args.model} at {args.image_size}, image {args.size}², tile {tile}, halo {halo}: "
        f"{len(grid)} windows; {torch.get_num_threads()} threads"
    )

    if args.objects:
        track(model, image, args)
    if args.only_tracking:
        return

    p = ns.ImagePredictor(model, tiles=True, halo=args.halo)
    p.set_image(image)
    times = []
    for r0, c0, _, _ in grid.windows[:3]:
        start = time.perf_counter()
        p.predict(points=[(r0 + tile // 2, c0 + tile // 2)], labels=[1])
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    p.predict(points=[(tile // 2, tile // 2)], labels=[1])
    cached = time.perf_counter() - start
    print(
        f"window embedding + decode: {np.mean(times[1:] or times):.2f} s "
        f"(first {times[0]:.2f} s); a prompt on a kept window: {cached * 1000:.0f} ms"
    )

    for tiles in (False, True):
        keep_all = {} if args.filters else dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)
        gen = ns.AutomaticMaskGenerator(
            model, points_per_side=args.points_per_side, tiles=tiles, halo=args.halo, **keep_all
        )
        tracemalloc.start()
        start = time.perf_counter()
        records = gen.generate(image)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        name = f"tiled ({len(grid)} windows)" if tiles else "downscaled (1 image)"
        print(
            f"segment everything {name}: {seconds:.1f} s, {len(records)} masks, "
            f"peak traced memory {peak / 2**20:.0f} MiB"
        )


def track(model, image, args) -> None:
    """Seconds per tracked frame: the image drifting 2 pixels a frame, ``args.objects`` clicks
    spread over it, forward from frame 0; windowed, then downscaled."""
    import napari_sam2 as ns

    movie = np.stack([np.roll(image, (2 * t, 3 * t), axis=(0, 1)) for t in range(args.frames)])
    size = image.shape[0]
    spots = np.linspace(size * 0.15, size * 0.85, args.objects)
    clicks = [(float(r), float(c)) for r, c in zip(spots, spots[::-1])]
    for kind in (ns.WindowTracker, ns.VideoTracker):
        tracker = kind(model, movie)
        for i, point in enumerate(clicks, start=1):
            tracker.add_prompt(0, i, points=[point], labels=[1])
        start, cpu = time.perf_counter(), time.process_time()
        n = sum(1 for _ in tracker.propagate("forward"))
        per_frame = (time.perf_counter() - start) / n
        cpu_per_frame = (time.process_time() - cpu) / n
        if kind is ns.WindowTracker:
            moved = sum(tracker.recentrings.values())
            name = f"in windows ({tracker.num_windows} prompt windows, {moved} re-centrings)"
        else:
            name = "downscaled (whole frame)"
        print(
            f"tracking {args.objects} objects {name}: {per_frame:.2f} s per frame "
            f"({cpu_per_frame:.2f} s of CPU)"
        )
        tracker.close()


if __name__ == "__main__":
    main()
