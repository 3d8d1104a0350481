"""Tracking speed and peak memory: our VideoTracker vs the official SAM2VideoPredictor.

    .venv/bin/python benchmarks/track_benchmark.py [--frames 8 32 128] [--model sam2.1_hiera_tiny]
        [--size 1024] [--height 480] [--width 640] [--objects 1] [--ours-only]

Both sides load the same random-weight checkpoint (official file format) and track the same
synthetic clip from one click on frame 0: the official predictor from a JPEG folder (its only
input), ours from a .npy file of the decoded frames, read frame by frame. Every
(implementation, N) runs in its own process so that peak RSS (ru_maxrss) is its own. Prints
seconds per propagated frame and peak RSS, and the ratios ours/official measured in this run.
Runs by hand, not in the tests.
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


def make_clip(folder: Path, n: int, h: int, w: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:h, :w]
    frames = np.lib.format.open_memmap(folder / "frames.npy", "w+", np.uint8, (n, h, w, 3))
    jpegs = folder / "jpeg"
    jpegs.mkdir()
    for t in range(n):
        img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        cy, cx = h // 3 + (t % 40), w // 3 + 2 * (t % 40)
        img[(rr - cy) ** 2 + (cc - cx) ** 2 < (h // 8) ** 2] += 150
        Image.fromarray(img).save(jpegs / f"{t:05d}.jpg", quality=95)
        frames[t] = np.array(Image.open(jpegs / f"{t:05d}.jpg").convert("RGB"))
    frames.flush()
    return folder


class NpyFrames:
    """Frames of a .npy file read with plain file reads, one at a time. (A memmap would be
    lazy too, but the pages it touches count in the process's RSS and would hide what the
    tracker itself holds.)"""

    def __init__(self, path: Path) -> None:
        header = np.load(path, mmap_mode="r")
        self.shape, self.dtype = header.shape, header.dtype
        self._offset, self._path = header.offset, path
        self._size = int(np.prod(self.shape[1:]))
        del header

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t: int) -> np.ndarray:
        with open(self._path, "rb") as f:
            f.seek(self._offset + t * self._size * self.dtype.itemsize)
            frame = np.fromfile(f, dtype=self.dtype, count=self._size)
        return frame.reshape(self.shape[1:])


def official_predictor(name: str, size: int, checkpoint: Path):
    """Meta's SAM2VideoPredictor at input ``size`` with the weights of ``checkpoint``, built as
    our tracker behaves (corrections become conditioning frames)."""
    import torch
    from official import build_official

    model = build_official(
        name,
        video=True,
        overrides=[
            "++model.add_all_frames_to_correct_as_cond=true",
            f"++model.image_size={size}",
        ],
    )
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return model


def child(impl: str, folder: Path, args) -> dict:
    import torch

    torch.set_grad_enabled(False)
    click = (args.height // 3, args.width // 3)
    start = time.perf_counter()
    if impl == "official":
        model = official_predictor(args.model, args.size, folder / "ckpt.pt")
        state = model.init_state(str(folder / "jpeg"))
        for k in range(args.objects):
            model.add_new_points_or_box(
                state,
                0,
                k + 1,
                points=np.array([[click[1] + 5 * k, click[0]]], np.float32),
                labels=np.array([1], np.int32),
            )
        ready = time.perf_counter()
        n = sum(1 for _ in model.propagate_in_video(state))
    else:
        import napari_sam2 as ns
        from napari_sam2.model import CONFIGS, SAM2Model

        model = SAM2Model(CONFIGS[args.model].with_image_size(args.size))
        model.load_state_dict(torch.load(folder / "ckpt.pt", weights_only=True)["model"])
        frames = NpyFrames(folder / "frames.npy")
        tracker = ns.VideoTracker(model, frames)
        for k in range(args.objects):
            tracker.add_prompt(0, k + 1, points=[(click[0], click[1] + 5 * k)], labels=[1])
        ready = time.perf_counter()
        n = sum(1 for _ in tracker.propagate())
    done = time.perf_counter()
    return {
        "setup_s": ready - start,
        "s_per_frame": (done - ready) / n,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--model", default="sam2.1_hiera_tiny")
    p.add_argument("--size", type=int, default=1024, help="network input size")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--objects", type=int, default=1)
    p.add_argument(
        "--ours-only",
        action="store_true",
        help="skip the official predictor (e.g. for thousands of frames)",
    )
    p.add_argument("--child", nargs=2, metavar=("IMPL", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args)))
        return

    import torch
    from official import build_official, save_checkpoint

    print(
        f"{args.model}, {args.size}px input, {args.height}x{args.width} frames, "
        f"{args.objects} object(s), torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    print(f"{'N':>5} {'impl':>9} {'s/frame':>8} {'peak RSS MiB':>13} {'setup s':>8}")
    for n in args.frames:
        with tempfile.TemporaryDirectory(prefix="sam2-bench-") as tmp:
            folder = make_clip(Path(tmp), n, args.height, args.width)
            save_checkpoint(build_official(args.model, video=True), folder / "ckpt.pt")
            rows = {}
            for impl in ("ours",) if args.ours_only else ("official", "ours"):
                cmd = [sys.executable, __file__, "--child", impl, str(folder)] + [
                    a for a in sys.argv[1:]
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
                r = rows[impl]
                print(
                    f"{n:>5} {impl:>9} {r['s_per_frame']:>8.3f} {r['peak_rss_mib']:>13.0f} "
                    f"{r['setup_s']:>8.1f}",
                    flush=True,
                )
            if args.ours_only:
                continue
            o, u = rows["official"], rows["ours"]
            print(
                f"{n:>5} {'ratio':>9} {u['s_per_frame'] / o['s_per_frame']:>8.2f} "
                f"{u['peak_rss_mib'] / o['peak_rss_mib']:>13.2f}   (ours / official)",
                flush=True,
            )


if __name__ == "__main__":
    main()
