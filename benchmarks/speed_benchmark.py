"""Speed, ours against the official SAM2VideoPredictor in the same run: a first pass, a
re-propagation after a correction, ``both``, and the fast modes this machine has.

    .venv/bin/python benchmarks/speed_benchmark.py [--frames 8 32] [--size 1024]
        [--model sam2.1_hiera_tiny] [--skip-official]

One object, clicked on frame 0 of the synthetic clip of track_benchmark.py, tracked forward
through N frames (first pass, seconds per frame). Then a negative click on frame N/2 and the
propagation again from there: the official predictor encodes every frame again, ours reads the
embeddings it kept (re-propagation, seconds per frame). Then ``both`` from clicks on frames 1
and N-2: ours in one
call, whose backward pass reads the embeddings of the forward pass, against our forward and
backward passes without kept embeddings (what both cost before the cache). Each of
ours runs in fp32 (exact) and, where the CPU or GPU computes it natively, bf16. Prints seconds per
frame and the ratios official / ours ("x faster"). Runs by hand, not in the tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # official.py: builds the reference model
sys.path.insert(0, str(HERE))
from track_benchmark import NpyFrames, make_clip, official_predictor  # noqa: E402


def timed(results) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for _ in results:
        n += 1
    return n, time.perf_counter() - start


def official_runs(folder: Path, n: int, args) -> dict:
    model = official_predictor(args.model, args.size, folder / "ckpt.pt")
    state = model.init_state(str(folder / "jpeg"))
    click = np.array([[args.width // 3, args.height // 3]], np.float32)
    model.add_new_points_or_box(state, 0, 1, points=click, labels=np.array([1]))
    frames, seconds = timed(model.propagate_in_video(state))
    out = {"first pass": seconds / frames}
    mid = n // 2
    model.add_new_points_or_box(
        state, mid, 1, points=np.array([[5, 5]], np.float32), labels=np.array([0]),
        clear_old_points=False,
    )  # fmt: skip
    frames, seconds = timed(model.propagate_in_video(state, start_frame_idx=mid))
    out["re-propagation"] = seconds / frames
    return out


def our_runs(folder: Path, n: int, args, precision: str) -> dict:
    import torch

    import napari_sam2 as ns
    from napari_sam2.model import CONFIGS, SAM2Model

    model = SAM2Model(CONFIGS[args.model].with_image_size(args.size))
    model.load_state_dict(torch.load(folder / "ckpt.pt", weights_only=True)["model"])
    model.set_precision(precision)
    frames = NpyFrames(folder / "frames.npy")
    click = (args.height // 3, args.width // 3)
    mid = n // 2

    tracker = ns.VideoTracker(model, frames)
    tracker.add_prompt(0, 1, points=[click], labels=[1])
    count, seconds = timed(tracker.propagate())
    out = {"first pass": seconds / count}
    tracker.add_prompt(mid, 1, points=[(5, 5)], labels=[0])
    count, seconds = timed(tracker.propagate(start=mid))
    out["re-propagation"] = seconds / count
    tracker.close()

    # both: clicked on frames 1 and n-2, so that the forward pass (1 -> end) and the backward
    # pass (n-2 -> 0) cross every frame in between; the cache encodes those once.
    def prompted(**kwargs):
        t = ns.VideoTracker(model, frames, **kwargs)
        for f in (1, n - 2):
            t.add_prompt(f, 1, points=[click], labels=[1])
        return t

    both = prompted()
    count, seconds = timed(both.propagate("both"))
    out["both"] = seconds / count
    both.close()
    without = prompted(embeddings=False, feature_cache=1)
    c1, s1 = timed(without.propagate("forward", start=1))
    c2, s2 = timed(without.propagate("backward", start=n - 2))
    out["forward + backward, no cache"] = (s1 + s2) / (c1 + c2)
    without.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    p.add_argument("--model", default="sam2.1_hiera_tiny")
    p.add_argument("--size", type=int, default=1024, help="network input size")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--skip-official", action="store_true")
    args = p.parse_args()

    import torch
    from official import build_official, save_checkpoint

    from napari_sam2.model.precision import resolve_precision

    torch.set_grad_enabled(False)
    fast = resolve_precision("auto", torch.device("cpu"))
    precisions = ["fp32"] + ([fast] if fast != "fp32" else [])
    print(
        f"{args.model}, {args.size}px input, {args.height}x{args.width} frames, 1 object, torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs, precisions here: {precisions}"
    )
    for n in args.frames:
        with tempfile.TemporaryDirectory(prefix="sam2-speed-") as tmp:
            folder = make_clip(Path(tmp), n, args.height, args.width)
            save_checkpoint(build_official(args.model, video=True), folder / "ckpt.pt")
            rows = {}
            if not args.skip_official:
                rows["official"] = official_runs(folder, n, args)
            for precision in precisions:
                rows[f"ours {precision}"] = our_runs(folder, n, args, precision)
        print(f"\n{n} frames: seconds per frame")
        keys = ["first pass", "re-propagation", "both", "forward + backward, no cache"]
        print(f"{'':>30} " + " ".join(f"{name:>14}" for name in rows))
        for key in keys:
            cells = [rows[name].get(key) for name in rows]
            print(
                f"{key:>30} "
                + " ".join("".rjust(14) if c is None else f"{c:>14.3f}" for c in cells)
            )
        if "official" in rows:
            for name in rows:
                if name == "official":
                    continue
                ratios = ", ".join(
                    f"{key} {rows['official'][key] / rows[name][key]:.2f}x"
                    for key in ("first pass", "re-propagation")
                )
                print(f"official / {name}: {ratios}")
        for name in rows:
            if "both" in rows[name]:
                r = rows[name]
                gain = r["forward + backward, no cache"] / r["both"]
                print(f"{name}: both with the cache is {gain:.2f}x faster than without")


if __name__ == "__main__":
    main()
