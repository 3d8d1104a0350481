"""Segment cells in the synthetic anisotropic 3-D sample stack from a few clicks on one slice.

    python examples/segment_stack.py [--checkpoint sam2.1_hiera_tiny.pt] [--output labels.tif]
        [--model sam2.1_hiera_tiny] [--device cpu] [--image-size 1024]

Two cells are clicked on the middle slice (one of them with a negative click to keep its
neighbour out); SAM 2 follows both up and down the stack ("both" directions) and the result is
written as a (Z, Y, X) label TIFF. Without --checkpoint the official weights are downloaded on
first use.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tifffile
from scipy import ndimage

import napari_sam2 as ns
from napari_sam2._sample_data import make_sample_stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="official .pt file (default: download)")
    parser.add_argument("--model", default="sam2.1_hiera_tiny", choices=ns.MODEL_NAMES)
    parser.add_argument("--output", default="labels.tif", help="label TIFF to write")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best found)")
    parser.add_argument("--image-size", type=int, default=1024, help="network input size")
    args = parser.parse_args(argv)

    ((stack, meta, _),) = make_sample_stack()  # (Z, Y, X) uint16, z spacing 4x the xy pixel
    middle = len(stack) // 2
    smooth = ndimage.gaussian_filter(stack[middle].astype(np.float32), 3)
    blobs, n = ndimage.label(smooth > np.percentile(smooth, 85))
    centres = ndimage.maximum_position(smooth, blobs, range(1, n + 1))
    sizes = ndimage.sum_labels(np.ones_like(blobs), blobs, range(1, n + 1))
    cells = [tuple(map(int, c)) for s, c in sorted(zip(sizes, centres), reverse=True)[:2]]

    model = ns.load_model(
        args.model, checkpoint=args.checkpoint, device=args.device, image_size=args.image_size
    )
    tracker = ns.VideoTracker(model, stack)
    # cell 1: a positive click, and a negative click on cell 2 so the two stay apart
    tracker.add_prompt(middle, 1, points=[cells[0], cells[1]], labels=[1, 0])
    tracker.add_prompt(middle, 2, points=[cells[1]], labels=[1])
    print(f"stack {stack.shape} {stack.dtype}, clicks on slice {middle} at {cells}")

    start = time.perf_counter()
    labels = ns.track_to_labels(tracker, direction="both")
    elapsed = time.perf_counter() - start
    tifffile.imwrite(
        args.output,
        labels.astype(np.uint16),
        imagej=True,
        resolution=(1.0, 1.0),
        metadata={"spacing": meta["scale"][0], "axes": "ZYX"},
    )
    voxels = {i: int((labels == i).sum()) for i in (1, 2)}
    print(
        f"tracked in {elapsed:.1f} s on {model.device}; voxels per cell {voxels} -> {args.output}"
    )
    tracker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
