"""``napari-sam2 train``: fine-tune SAM 2 on labelled stacks into an official checkpoint.

    napari-sam2 train STACK... --labels LABELS -o OUT.pt [--checkpoint BASE | --model NAME]
        [--image-size N] [--steps N] [--lr LR] [--clip-frames K] [--train decoder|memory|all]
        [--lora R] [--device D] [--precision P] [--val-fraction F] [--resume] [--overwrite] [-q]

LABELS: one label file (one stack) or a folder of ``<stack name>.tif/.npy/.zarr``. Every input
is checked before the model loads (exit 2). Ctrl+C or SIGTERM leaves ``OUT.pt.train-state``;
``--resume`` continues from it. OUT.pt and its sidecar OUT.json appear only when training ends.
"""

from __future__ import annotations

import argparse

from ..train import TRAIN_MODES, state_path
from ..train import train as run_training
from .common import EXIT_OK, log


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def add_parser(commands, parents, positive) -> None:
    """Register ``train`` (``parents``: the shared --debug and model options)."""
    p = commands.add_parser(
        "train",
        parents=parents,
        help="fine-tune SAM 2 on labelled images or stacks (an official checkpoint out)",
        description="Fine-tune SAM 2 on your own label images: every label id is an object. "
        "2-D images train the image path; stacks give clips of K frames and train the memory "
        "too. Writes OUT.pt (Meta's format: loads in napari-sam2 and in Meta's build_sam2) and "
        "OUT.json (what it was trained on and validation IoU before/after). See "
        "docs/training.md.",
    )
    p.add_argument("stacks", nargs="+", metavar="STACK", help="images or stacks (as segment)")
    p.add_argument(
        "--labels",
        required=True,
        metavar="LABELS",
        help="label image/volume of the one STACK, or a folder of <stack name>.tif/.npy/.zarr",
    )
    p.add_argument("--output", "-o", required=True, metavar="OUT.pt", help="the checkpoint")
    p.add_argument("--steps", type=positive, default=300, help="training steps (default 300)")
    p.add_argument(
        "--lr", type=_positive_float, help="learning rate (default: by --train, docs/training.md)"
    )
    p.add_argument(
        "--clip-frames", type=positive, default=8, help="frames per stack sample (default 8)"
    )
    p.add_argument(
        "--train",
        choices=TRAIN_MODES,
        default="decoder",
        help="what is trained: decoder (default), memory (+ memory attention/encoder), all",
    )
    p.add_argument("--lora", type=positive, metavar="R", help="LoRA rank on the image encoder")
    p.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="objects held out for validation (default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (less memory, slower)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.pt")
    p.add_argument("--axis", type=int, help="for (T, Z, Y, X) data: the axis to track (0/1)")
    p.add_argument("--index", type=int, help="with --axis: the position on the other axis")
    p.set_defaults(run=train_command)


def train_command(args) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    stacks = list(args.stacks)
    labels = args.labels if len(stacks) > 1 or Path(args.labels).is_dir() else [args.labels]
    bar = tqdm(total=args.steps, desc="train", unit="step", disable=args.quiet)

    def progress(step, steps, loss, val):
        bar.n = step
        bar.set_postfix(loss=f"{loss:.3f}", val_iou="-" if val is None else f"{val:.3f}")

    try:
        report = run_training(
            stacks,
            labels,
            args.output,
            model=args.model,
            checkpoint=args.checkpoint,
            image_size=args.image_size,
            steps=args.steps,
            lr=args.lr,
            clip_frames=args.clip_frames,
            train=args.train,
            lora=args.lora,
            device=args.device,
            precision=args.precision,
            val_fraction=args.val_fraction,
            resume=args.resume,
            overwrite=args.overwrite,
            seed=args.seed,
            activation_checkpointing=args.activation_checkpointing,
            axis=args.axis,
            index=args.index,
            progress=progress,
        )
    except BaseException:
        bar.close()
        state = state_path(Path(args.output))
        if state.exists():
            log(f"the run's state is in {state}: rerun with --resume to continue", args.quiet)
        raise
    bar.close()
    before, after = report.val_before["one_click_iou"], report.val_after["one_click_iou"]
    log(
        f"wrote {report.path} (+ {report.path.with_suffix('.json').name}): {report.steps} "
        f"steps, one-click IoU {before:.3f} -> {after:.3f}"
        + (" (on training objects)" if report.val_on_training_objects else ""),
        args.quiet,
    )
    return EXIT_OK
