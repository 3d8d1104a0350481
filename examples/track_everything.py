"""Segment every cell on the first frame of the synthetic time-lapse automatically, then track
all of them to a label file: no click at all.

    python examples/track_everything.py --checkpoint sam2.1_hiera_tiny.pt [--output labels.tif]
        [--model sam2.1_hiera_tiny] [--image-size 1024] [--device cpu] [--frames N]
        [--points-per-side 32] [--pred-iou-thresh 0.8] [--stability-score-thresh 0.95]

SAM 2's automatic mask generator clicks a grid over frame 0 and keeps the good, distinct masks;
``masks_to_labels`` makes one label image of them (the best mask wins where two overlap), and
``VideoTracker.add_labels`` turns each of its objects into a mask prompt. All cells are then
tracked together and written as a (T, H, W) label TIFF, one label value per cell. The same from
the command line: ``napari-sam2 segment movie.tif --auto 0 -o labels.tif``.
"""

from __future__ import annotations

import argparse
import sys
import time

import tifffile

import napari_sam2 as ns
from napari_sam2._sample_data import synthetic_cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="official SAM 2 .pt file")
    parser.add_argument("--model", default="sam2.1_hiera_tiny", choices=ns.MODEL_NAMES)
    parser.add_argument("--image-size", type=int, default=1024, help="multiple of 64")
    parser.add_argument("--output", default="labels.tif", help="label TIFF to write")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best found)")
    parser.add_argument("--frames", type=int, default=None, help="track only the first N frames")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.8)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    args = parser.parse_args(argv)

    movie = synthetic_cells()  # (T, H, W) uint16
    if args.frames:
        movie = movie[: args.frames]
    model = ns.load_model(
        args.model, checkpoint=args.checkpoint, device=args.device, image_size=args.image_size
    )
    tracker = ns.VideoTracker(model, movie)

    generator = ns.AutomaticMaskGenerator(
        model,
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )
    start = time.perf_counter()
    records = generator.generate(movie[0], window=tracker.source.window)  # as the tracker sees it
    print(f"frame 0: {len(records)} objects found in {time.perf_counter() - start:.1f} s")
    if not records:
        print("nothing to track: lower --pred-iou-thresh / --stability-score-thresh")
        return 1
    first = ns.masks_to_labels(records, movie.shape[1:], dtype="uint16")
    prompted = tracker.add_labels(0, first)
    print(f"tracking {len(prompted.obj_ids)} objects (too small for the model: {prompted.dropped})")

    start = time.perf_counter()
    labels = ns.track_to_labels(tracker, direction="forward")
    elapsed = time.perf_counter() - start
    print(f"{len(movie)} frames in {elapsed:.1f} s ({elapsed / len(movie):.2f} s/frame)")
    tifffile.imwrite(args.output, labels)
    present = {i: int((labels == i).any(axis=(1, 2)).sum()) for i in prompted.obj_ids}
    print(f"frames with each object: {present} -> {args.output}")
    tracker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
