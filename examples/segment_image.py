"""Segment one cell in a slice of the synthetic 16-bit sample stack from a single click.

    python examples/segment_image.py --checkpoint sam2.1_hiera_tiny.pt [--model sam2.1_hiera_tiny]
        [--output mask.tif] [--device cpu]

The click is placed on the brightest cell of the middle slice; the best of SAM 2's three
hypotheses is written as a label TIFF (0 background, 1 the cell).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tifffile
from scipy import ndimage

import napari_sam2 as ns
from napari_sam2._sample_data import synthetic_cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="official SAM 2 .pt file")
    parser.add_argument("--model", default="sam2.1_hiera_tiny", choices=ns.MODEL_NAMES)
    parser.add_argument("--output", default="mask.tif", help="label TIFF to write")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best found)")
    args = parser.parse_args(argv)

    stack = synthetic_cells()  # (T, H, W) uint16
    image = stack[len(stack) // 2]
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 3)
    row, col = np.unravel_index(np.argmax(smooth), smooth.shape)

    model = ns.load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    predictor = ns.ImagePredictor(model)
    start = time.perf_counter()
    predictor.set_image(image)
    embedded = time.perf_counter()
    result = predictor.predict(points=[(row, col)], labels=[1])
    done = time.perf_counter()

    mask = result.masks[result.best]
    tifffile.imwrite(args.output, mask.astype(np.uint8))
    print(f"image {image.shape} {image.dtype}, click at (row={row}, col={col})")
    print(
        f"embedding {embedded - start:.2f} s, prompt {1000 * (done - embedded):.0f} ms "
        f"on {model.device}"
    )
    print(
        f"mask of {int(mask.sum())} pixels, predicted IoU {result.scores[result.best]:.3f} "
        f"-> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
