"""Lineage benchmark (run by hand, not a test): tracking with new objects and divisions on the
synthetic lineage time-lapse (``_sample_lineage.synthetic_lineage``: cells that divide and
cells that enter), scored against its ground truth with traccuracy's CTC metrics.

    PYTHONPATH=src python benchmarks/lineage_benchmark.py train --out /tmp/lineage_decoder.pt \
        [--train decoder] [--lr 1e-3] [--steps 300] [--minutes 35] [--size 256] [--images] \
        [--checkpoint START.pt]
    PYTHONPATH=src python benchmarks/lineage_benchmark.py track [--checkpoint A.pt B.pt ...] \
        [--seed 0] [--new-objects 5] [--size 256] [--oracle] [--save FOLDER]

``train`` fine-tunes random-weight sam2.1 tiny (the weights ``benchmarks/train_benchmark.py``
starts from) on four training movies of the same generator (seeds 101-104, never the benchmark's
movie), with each daughter labelled with its mother's id (the tracker is meant to follow a
dividing cell onto both daughters; the lineage cuts the mask), and stops after ``--minutes``
(the weights of the last step are then written: the run's resumable state holds them).
``track`` prompts the ground-truth labels of frame 0 (as a user starting from a Cellpose
segmentation), tracks forward with ``new_objects=N`` and ``divisions=True``, writes the result and
the ground truth in the CTC format with ``ns.write_ctc`` and reports traccuracy's DET, TRA
and LNK (``CTCMetrics``, CTC matching), SEG (the CTC definition: mean IoU of each ground-truth
cell with the predicted cell covering more than half of it, 0 if none; computed here, traccuracy
has no SEG) and division F1 (``DivisionMetrics`` on one-to-one IoU > 0.5 matching, with a
frame tolerance of 0 and of 2). Without ``--checkpoint`` it tracks with the random weights; an
official checkpoint works too (``--checkpoint sam2.1_hiera_tiny.pt --size 1024``). ``--oracle``
also scores the ground truth against itself and a perfect tracker through our lineage rules.
Set ``TQDM_DISABLE=1`` to silence traccuracy's progress bars.

Everything runs on one thread (``torch.set_num_threads(1)``; also set ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_benchmark import random_checkpoint  # noqa: E402

import napari_sam2 as ns  # noqa: E402
from napari_sam2._sample_lineage import LineageSample, synthetic_lineage  # noqa: E402

TRAIN_SEEDS = (101, 102, 103, 104)
SLIVER = 80  # pixels: at input 256 an object must cover 4 of the 64x64 mask grid's cells
BASE = Path(tempfile.gettempdir()) / "lineage_benchmark_base.pt"


def base_checkpoint() -> Path:
    """The random-weight sam2.1 tiny of ``train_benchmark.py`` (seeded), kept in /tmp."""
    if not BASE.exists():
        BASE.parent.mkdir(parents=True, exist_ok=True)
        made = random_checkpoint(BASE.parent)
        made.replace(BASE)
    return BASE


def roots(sample: LineageSample, slivers: bool = True) -> np.ndarray:
    """Every daughter relabelled as its first ancestor (what the tracker is to follow); with
    ``slivers`` (training labels), cells too small for the mask grid unlabelled."""
    parent = sample.parents
    lut = np.arange(int(sample.labels.max()) + 1)
    for i in range(len(lut)):
        j = i
        while j in parent:
            j = parent[j]
        lut[i] = j
    out = lut[sample.labels].astype(np.uint16)
    # slivers of entering cells are too small for the mask grid: unlabelled
    for frame in out if slivers else ():
        ids, counts = np.unique(frame, return_counts=True)
        for i, n in zip(ids, counts):
            if i and n < SLIVER:
                frame[frame == i] = 0
    return out


# ------------------------------------------------------------------------------- scoring
def seg(gt_labels: np.ndarray, labels: np.ndarray) -> float:
    """CTC SEG: over every ground-truth cell on every frame, the IoU with the predicted cell
    that covers more than half of it (0 if none), averaged."""
    scores = []
    for g, p in zip(gt_labels, labels):
        for i in np.unique(g[g > 0]):
            cell = g == i
            ids, counts = np.unique(p[cell], return_counts=True)
            best = ids[np.argmax(counts)]
            if best == 0 or 2 * counts.max() <= cell.sum():
                scores.append(0.0)
                continue
            other = p == best
            scores.append(float((cell & other).sum() / (cell | other).sum()))
    return float(np.mean(scores)) if scores else float("nan")


def score(gt: LineageSample, labels: np.ndarray, parents: dict, folder: Path) -> dict:
    """DET, TRA, LNK (traccuracy, CTC matching), SEG, division F1 (traccuracy, IoU > 0.5
    one-to-one, frame tolerance 0 and 2; how many of the ground truth's divisions were
    found with tolerance 2, how many the result has), after writing both in the CTC format."""
    from traccuracy import run_metrics
    from traccuracy.loaders import load_ctc_data
    from traccuracy.matchers import CTCMatcher, IOUMatcher
    from traccuracy.metrics import CTCMetrics, DivisionMetrics

    ns.write_ctc(gt.labels, folder / "gt", gt.parents, overwrite=True)
    ns.write_ctc(labels, folder / "res", parents, overwrite=True)
    truth = load_ctc_data(str(folder / "gt"), run_checks=True)
    result = load_ctc_data(str(folder / "res"), run_checks=True)
    ctc, _ = run_metrics(truth, result, CTCMatcher(), [CTCMetrics()])
    div, _ = run_metrics(
        truth, result, IOUMatcher(iou_threshold=0.5, one_to_one=True), [DivisionMetrics(2)]
    )
    ctc, div = ctc[0]["results"], div[0]["results"]
    return {
        "DET": ctc["DET"],
        "SEG": seg(gt.labels, labels),
        "TRA": ctc["TRA"],
        "LNK": ctc["LNK"],
        "div F1 (0)": f1(div["Frame Buffer 0"]),
        "div F1 (2)": f1(div["Frame Buffer 2"]),
        "div found (2)": div["Frame Buffer 2"]["True Positive Divisions"],
        "div made": div["Frame Buffer 0"]["Total Predicted Divisions"],
        "tracks": len(set(np.unique(labels)) - {0}),
    }


def f1(buffer: dict) -> float:
    """Division F1; 0 (not traccuracy's nan) when no division is right, so none is found."""
    value = buffer["Division F1"]
    return 0.0 if np.isnan(value) and buffer["Total GT Divisions"] else float(value)


def show(name: str, figures: dict, seconds: float | None = None) -> None:
    cells = "  ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
    )
    tail = "" if seconds is None else f"  ({seconds:.0f} s)"
    print(f"{name:28s} {cells}{tail}", flush=True)


# ------------------------------------------------------------------------------- tracking
def oracle(gt: LineageSample, size: int, options) -> tuple[np.ndarray, dict]:
    """What our lineage rules make of a perfect tracker: each first-frame cell and each
    entering cell one object, its mask (daughters included: the tracker follows a dividing
    cell onto both) given at the model's mask resolution, through the same relabelling."""
    import torch.nn.functional as F

    from napari_sam2.engine.labels import LabelSink
    from napari_sam2.engine.lineage import Lineage
    from napari_sam2.engine.lineage_tracking import _Relabel
    from napari_sam2.engine.results import FrameResult

    objects = roots(gt, slivers=False)
    lineage = Lineage(options)
    relabel = _Relabel(None, lineage)
    labels = np.zeros(gt.labels.shape, np.uint16)
    sink = LabelSink(labels)
    grid = size // 4
    ids = sorted(set(np.unique(objects)) - {0})
    for t, frame in enumerate(objects):
        masks = torch.from_numpy(np.stack([frame == i for i in ids])).float()[:, None]
        low = F.interpolate(masks, size=(grid, grid), mode="area")
        logits = torch.where(low > 0.5, 10.0, -10.0)
        present = [k for k, i in enumerate(ids) if (low[k] > 0.5).any()]
        result = FrameResult(
            t, [ids[k] for k in present], low_res=logits[present], shape=frame.shape
        )
        for out in relabel.push(result):
            sink.write(out)
    for out in relabel.flush():
        sink.write(out)
    return labels, lineage.parents()


def load(checkpoint: Path, size: int):
    return ns.load_model("sam2.1_hiera_tiny", checkpoint, device="cpu", image_size=size)


def track(args) -> None:
    from napari_sam2.engine.lineage import LineageOptions

    gt = synthetic_lineage(seed=args.seed)
    options = LineageOptions(min_area=args.min_area, persist=args.persist)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.oracle:
            show("ground truth vs itself", score(gt, gt.labels, gt.parents, tmp))
            labels, parents = oracle(gt, args.size, options)
            show("perfect tracker + lineage", score(gt, labels, parents, tmp))
        for checkpoint in args.checkpoint or [None]:
            name = "random weights" if checkpoint is None else Path(checkpoint).name
            t = time.perf_counter()
            model = load(Path(checkpoint) if checkpoint else base_checkpoint(), args.size)
            finder = ns.AutomaticMaskGenerator(model, points_per_side=args.points_per_side)
            options = LineageOptions(min_area=args.min_area, persist=args.persist, finder=finder)
            tracker = ns.VideoTracker(model, gt.frames)
            tracker.add_labels(0, gt.labels[0])
            labels = ns.track_to_labels(
                tracker,
                direction="forward",
                new_objects=args.new_objects,
                divisions=True,
                lineage_options=options,
            )
            parents = {tr.id: tr.parent for tr in tracker.lineage if tr.parent}
            labels = np.asarray(labels)
            if args.save:
                np.save(Path(args.save) / f"{name}.npy", labels)
            show(name, score(gt, labels, parents, tmp), time.perf_counter() - t)


class _TimeUp(Exception):
    pass


def train(args) -> None:
    movies = [synthetic_lineage(seed=s) for s in TRAIN_SEEDS]
    out = Path(args.out)
    deadline = time.perf_counter() + 60 * args.minutes
    start = time.perf_counter()

    def tick(step, steps, loss, val):
        if step % 10 == 0:
            shown = "-" if val is None else f"{val:.2f}"
            print(
                f"  step {step}/{steps}: loss {loss:.3f}, latest one-click IoU {shown} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        if time.perf_counter() > deadline:
            raise _TimeUp(step)

    stacks, labels = [m.frames for m in movies], [roots(m) for m in movies]
    if args.images:  # every third frame as a 2-D image: trains the image path only, faster
        stacks = [f for m in stacks for f in m[::3]]
        labels = [f for m in labels for f in m[::3]]
    try:
        report = ns.train(
            stacks,
            labels,
            out,
            checkpoint=Path(args.checkpoint) if args.checkpoint else base_checkpoint(),
            image_size=args.size,
            steps=args.steps,
            train=args.train,
            lr=args.lr,
            clip_frames=args.clip_frames,
            val_every=args.val_every,
            overwrite=True,
            device="cpu",
            progress=tick,
        )
    except _TimeUp as stop:
        state_file = out.with_name(out.name + ".train-state")
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        torch.save({"model": state["model"]}, out)
        history = ", ".join(f"{v['step']}: {v['one_click_iou']:.2f}" for v in state["val_history"])
        print(f"time up after {stop.args[0]} steps; one-click IoU by step {history}")
        print(f"wrote {out} (the weights after step {state['step']})")
        return
    history = ", ".join(f"{v['step']}: {v['one_click_iou']:.2f}" for v in report.val_history)
    print(f"one-click IoU by step {history}; before {report.val_before}, after {report.val_after}")
    print(f"wrote {report.path} in {report.seconds:.0f} s")


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--train", default="decoder", choices=["decoder", "memory", "all"])
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--minutes", type=float, default=35.0)
    t.add_argument("--size", type=int, default=256)
    t.add_argument("--clip-frames", type=int, default=4)
    t.add_argument("--val-every", type=int, default=50)
    t.add_argument("--images", action="store_true", help="train on frames, not 4-frame clips")
    t.add_argument("--checkpoint", help="start from these weights (default: the random ones)")
    k = sub.add_parser("track")
    k.add_argument("--checkpoint", nargs="*", help="trained .pt files (none: random weights)")
    k.add_argument("--seed", type=int, default=0, help="of the benchmark movie")
    k.add_argument("--new-objects", type=int, default=5)
    k.add_argument("--size", type=int, default=256)
    k.add_argument("--points-per-side", type=int, default=16)
    k.add_argument("--min-area", type=float, default=20.0)
    k.add_argument("--persist", type=int, default=3)
    k.add_argument("--oracle", action="store_true", help="also score a perfect tracker")
    k.add_argument("--save", help="folder to save each result's labels (.npy) in")
    args = parser.parse_args()
    {"train": train, "track": track}[args.command](args)


if __name__ == "__main__":
    main()
