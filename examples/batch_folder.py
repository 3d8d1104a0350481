"""Segment every TIFF stack in a folder, each from the prompts CSV beside it, with the Python API.

    python examples/batch_folder.py FOLDER [--output OUT] [--checkpoint PATH] [--image-size N]
        [--model sam2.1_hiera_tiny] [--device cpu] [--direction both]

For each ``FOLDER/<name>.tif`` with a ``FOLDER/<name>.csv`` (clicks and boxes; the format is in
docs/cli.md) this writes ``OUT/<name>_labels.tif`` (OUT defaults to FOLDER), one label value per
object id. Stacks without a CSV are skipped. The model is loaded once (downloaded on first use
unless --checkpoint is given); stacks are read lazily and labels written frame by frame, so
stack size is limited by disk, not RAM. The command line does the same in one line:
``napari-sam2 segment "FOLDER/*.tif" --prompts FOLDER -o OUT``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import napari_sam2 as ns
from napari_sam2.io import (
    add_prompts,
    label_counts,
    label_dtype,
    label_output,
    open_stack,
    read_prompts,
)


def segment_stack(model, tif: Path, csv: Path, out: Path, direction: str) -> None:
    stack = open_stack(tif)  # memory-mapped (or read page by page when compressed)
    prompts = read_prompts(csv, stack)  # checked against the stack; errors name the CSV line
    tracker = ns.VideoTracker(model, stack.frames)
    try:
        add_prompts(tracker, prompts, csv)
        dtype = label_dtype(max(p.obj_id for p in prompts))
        with label_output(out, stack.label_shape, dtype, overwrite=True) as labels:
            ns.track_to_labels(tracker, labels, direction=direction)
            counts = label_counts(labels)  # id -> (voxels, frames), one frame at a time
    finally:
        tracker.close()
        stack.close()
    found = sorted(counts)
    ids = sorted({p.obj_id for p in prompts})
    print(f"{tif.name}: {stack.label_shape}, objects {ids}, found {found} -> {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of <name>.tif + <name>.csv")
    parser.add_argument("--output", type=Path, help="folder for the labels (default: FOLDER)")
    parser.add_argument("--checkpoint", help="official .pt file (default: download / cache)")
    parser.add_argument("--model", default="sam2.1_hiera_tiny", choices=ns.MODEL_NAMES)
    parser.add_argument("--image-size", type=int, default=1024, help="multiple of 64")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best found)")
    parser.add_argument("--direction", default="both", choices=("forward", "backward", "both"))
    args = parser.parse_args(argv)

    out_dir = args.output or args.folder
    out_dir.mkdir(parents=True, exist_ok=True)
    tifs = sorted(p for p in args.folder.glob("*.tif") if not p.stem.endswith("_labels"))
    pairs = [(t, t.with_suffix(".csv")) for t in tifs if t.with_suffix(".csv").is_file()]
    for tif in sorted(set(tifs) - {t for t, _ in pairs}):
        print(f"{tif.name}: no {tif.stem}.csv, skipped")
    if not pairs:
        print(f"nothing to do: no <name>.tif with a <name>.csv in {args.folder}")
        return 1

    model = ns.load_model(
        args.model, checkpoint=args.checkpoint, device=args.device, image_size=args.image_size
    )
    start = time.perf_counter()
    for tif, csv in pairs:
        segment_stack(model, tif, csv, out_dir / f"{tif.stem}_labels.tif", args.direction)
    print(f"{len(pairs)} stacks in {time.perf_counter() - start:.1f} s on {model.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
