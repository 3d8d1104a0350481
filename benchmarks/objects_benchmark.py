"""Tracking many objects: seconds per frame for 1, 4 and 16 objects, ours vs the official
SAM2VideoPredictor (which loops over objects), and the marginal cost of one more object.

    .venv/bin/python benchmarks/objects_benchmark.py [--objects 1 4 16] [--size 512]
        [--frames 10] [--model sam2.1_hiera_tiny] [--ours-only] [--object-batch 16]
        [--precision fp32]

Both sides load the same random-weight checkpoint and track the same synthetic clip (see
track_benchmark.py) from N clicks on frame 0, spread over the frame. A frame's time is measured
between two yielded results; the mean is taken over the frames whose memory is full (frame 7
on: the prompted frame and 6 previous ones), where the per-object work is largest. Every
(implementation, N) runs in its own process, so that peak RSS is its own. The marginal cost per
object is (t(N_max) - t(N_min)) / (N_max - N_min); the ratio ours / official of it is the
figure of merit. Runs by hand, not in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # official.py: builds the reference model
sys.path.insert(0, str(HERE))
from track_benchmark import NpyFrames, make_clip, official_predictor  # noqa: E402

FULL_MEMORY_FROM = 7  # frames 7.. attend to the prompted frame and 6 previous ones


def clicks(n: int, h: int, w: int) -> list[tuple[int, int]]:
    """n (row, col) clicks on a regular grid inside the frame."""
    side = int(np.ceil(np.sqrt(n)))
    rows = np.linspace(h * 0.15, h * 0.85, side)
    cols = np.linspace(w * 0.15, w * 0.85, side)
    return [(int(rows[i // side]), int(cols[i % side])) for i in range(n)]


def child(impl: str, folder: Path, n_objects: int, args) -> dict:
    import torch

    torch.set_grad_enabled(False)
    points = clicks(n_objects, args.height, args.width)
    if impl == "official":
        model = official_predictor(args.model, args.size, folder / "ckpt.pt")
        state = model.init_state(str(folder / "jpeg"))
        for k, (r, c) in enumerate(points):
            model.add_new_points_or_box(
                state, 0, k + 1, points=np.array([[c, r]], np.float32), labels=np.array([1])
            )
        results = model.propagate_in_video(state)
    else:
        import napari_sam2 as ns
        from napari_sam2.model import CONFIGS, SAM2Model

        model = SAM2Model(CONFIGS[args.model].with_image_size(args.size))
        model.load_state_dict(torch.load(folder / "ckpt.pt", weights_only=True)["model"])
        model.set_precision(args.precision)
        tracker = ns.VideoTracker(
            model, NpyFrames(folder / "frames.npy"), object_batch=args.object_batch
        )
        for k, (r, c) in enumerate(points):
            tracker.add_prompt(0, k + 1, points=[(r, c)], labels=[1])
        results = tracker.propagate()
    times = []
    last = time.perf_counter()
    for _ in results:
        now = time.perf_counter()
        times.append(now - last)
        last = now
    steady = times[FULL_MEMORY_FROM:] or times[1:]
    return {
        "s_per_frame": float(np.mean(steady)),
        "frames_timed": len(steady),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--model", default="sam2.1_hiera_tiny")
    p.add_argument("--size", type=int, default=512, help="network input size")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument(
        "--object-batch", type=int, default=None, help="ours: objects per batch (default: ours)"
    )
    p.add_argument("--ours-only", action="store_true")
    p.add_argument("--precision", default="fp32", help="ours: fp32, bf16, fp16 or auto")
    p.add_argument("--child", nargs=3, metavar=("IMPL", "FOLDER", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        impl, folder, n = args.child
        print(json.dumps(child(impl, Path(folder), int(n), args)))
        return

    import torch
    from official import build_official, save_checkpoint

    impls = ("ours",) if args.ours_only else ("official", "ours")
    print(
        f"{args.model}, {args.size}px input, {args.height}x{args.width} frames, {args.frames} "
        f"frames (timed from frame {FULL_MEMORY_FROM}), torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, ours in "
        f"{args.precision}"
    )
    print(f"{'objects':>8} {'impl':>9} {'s/frame':>9} {'peak RSS MiB':>13}")
    rows: dict[str, dict[int, dict]] = {impl: {} for impl in impls}
    with tempfile.TemporaryDirectory(prefix="sam2-objects-") as tmp:
        folder = make_clip(Path(tmp), args.frames, args.height, args.width)
        save_checkpoint(build_official(args.model, video=True), folder / "ckpt.pt")
        for n in args.objects:
            for impl in impls:
                cmd = [
                    sys.executable,
                    __file__,
                    *sys.argv[1:],
                    "--child",
                    impl,
                    str(folder),
                    str(n),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                r = rows[impl][n] = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"{n:>8} {impl:>9} {r['s_per_frame']:>9.3f} {r['peak_rss_mib']:>13.0f}",
                    flush=True,
                )
            if not args.ours_only:
                ratio = rows["ours"][n]["s_per_frame"] / rows["official"][n]["s_per_frame"]
                print(f"{n:>8} {'ratio':>9} {ratio:>9.2f}   (ours / official)", flush=True)
    lo, hi = min(args.objects), max(args.objects)
    if hi > lo:
        marginal = {
            impl: (rows[impl][hi]["s_per_frame"] - rows[impl][lo]["s_per_frame"]) / (hi - lo)
            for impl in impls
        }
        for impl in impls:
            print(f"marginal cost per object ({impl}): {marginal[impl]:.3f} s/frame")
        if not args.ours_only:
            print(f"marginal ratio ours / official: {marginal['ours'] / marginal['official']:.2f}")


if __name__ == "__main__":
    main()
