"""Segment every TIFF stack in a folder on a Dask cluster, each from the prompts CSV beside it.

    python examples/batch_dask.py FOLDER -o OUT [--workers 2 | --scheduler tcp://head:8786]
        [--checkpoint PATH] [--image-size N] [--model sam2.1_hiera_tiny] [--resume]

For each ``FOLDER/<name>.tif`` with a ``FOLDER/<name>.csv`` this writes ``OUT/<name>_labels.tif``.
One Dask task per stack; each worker loads the model once and keeps it. A stack that fails is
reported and the others go on; with --resume, stacks whose complete output exists are skipped.
The command line does the same: ``napari-sam2 segment "FOLDER/*.tif" --prompts FOLDER -o OUT
--workers 2``. Needs ``pip install "napari-sam2[dask]"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dask.distributed import Client, LocalCluster

import napari_sam2 as ns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=2, help="local worker processes")
    where.add_argument("--scheduler", help="address of an existing Dask scheduler")
    parser.add_argument("--checkpoint", help="official .pt file (default: cached download)")
    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    stacks = sorted(p for p in args.folder.glob("*.tif") if p.with_suffix(".csv").exists())
    if not stacks:
        sys.exit(f"no <name>.tif with a <name>.csv beside it in {args.folder}")
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0")
        client = Client(cluster)
    with client:
        print(f"{len(stacks)} stacks on {len(client.scheduler_info()['workers'])} workers")
        report = ns.segment_many(
            stacks,
            args.model,
            prompts=args.folder,
            out_dir=args.output,
            client=client,
            checkpoint=args.checkpoint,
            image_size=args.image_size,
            resume=args.resume,
            progress=False,
        )
        if not args.scheduler:
            cluster.close()
    for stack, result in sorted(report.done.items()):
        print(f"{stack.name}: {len(result.obj_ids)} objects, {len(result.tracked_frames)} frames")
    for stack in report.skipped:
        print(f"{stack.name}: already done")
    for stack, message in sorted(report.failed.items()):
        print(f"{stack.name}: FAILED: {message}")
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
