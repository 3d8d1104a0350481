"""Segment everything, ours against the official SAM2AutomaticMaskGenerator in the same run:
the same random weights (made to give masks, as the parity test does), the same parameters,
the same image; prints seconds, the ratio official / ours, and whether the masks are the same.

    .venv/bin/python benchmarks/automatic_benchmark.py [--size 1024] [--height 480]
        [--width 640] [--points-per-side 32] [--points-per-batch 64] [--repeats 3]
        [--precisions fp32] [--m2m] [--skip-official]

Repetitions alternate (official, ours, official, ours, ...) so that a machine shared with other
work loads both alike; the ratio is of the medians (of wall time, and of the process's CPU
time, which a shared machine disturbs less). Masks are compared as the parity test compares
them (tests/parity/test_automatic_parity.py): same number, each official mask matched to one
of ours with IoU >= 0.99, same scores within 1e-4, same order. Runs by hand, not in
the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # official.py: builds the reference model
sys.path.insert(0, str(HERE.parent / "tests" / "parity"))  # the parity test's weight changes
sys.path.insert(0, str(HERE))
from speed_benchmark import load  # noqa: E402  (the machine's load average, as it prints it)


def discs(h: int, w: int) -> np.ndarray:
    """uint8 RGB: coloured discs on a grey background with a little noise."""
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:h, :w]
    img = (60 + rng.integers(0, 10, (h, w, 3))).astype(np.uint8)
    for _ in range(12):
        r, c = rng.integers(0, h), rng.integers(0, w)
        radius = rng.integers(min(h, w) // 20, min(h, w) // 6)
        img[(rr - r) ** 2 + (cc - c) ** 2 < radius**2] = rng.integers(0, 256, 3)
    return img


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sam2.1_hiera_tiny")
    p.add_argument("--size", type=int, default=1024, help="network input size")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--points-per-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precisions", nargs="+", default=["fp32"], help="ours: fp32, bf16, auto")
    p.add_argument("--m2m", action="store_true", help="use_m2m=True on both sides")
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import test_automatic_parity as parity
    from official import build_official

    from napari_sam2.engine.automatic import AutomaticMaskGenerator
    from napari_sam2.model import CONFIGS, SAM2Model

    torch.set_grad_enabled(False)
    parity.IMAGE_SIZE, parity.H, parity.W = args.size, args.height, args.width
    parity.POINTS_PER_SIDE = args.points_per_side
    image = discs(args.height, args.width)
    official = build_official(args.model, seed=0, overrides=[f"++model.image_size={args.size}"])
    parity.make_masks_survive(official, image)
    ours = {}
    for precision in args.precisions:
        model = SAM2Model(CONFIGS[args.model].with_image_size(args.size))
        model.load_state_dict(official.state_dict(), strict=True)
        ours[precision] = model.eval().set_precision(precision)
    options = dict(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        use_m2m=args.m2m,
    )
    print(
        f"{args.model}, {args.size}px input, {args.height}x{args.width} image, {options}, torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs ({torch.get_num_threads()} threads), "
        f"load average {load()}"
    )
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    results = {}
    for _ in range(args.repeats):
        if not args.skip_official:
            start, cpu0 = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results["official"] = parity.official_generator(official, **options).generate(image)
            times.setdefault("official", []).append(time.perf_counter() - start)
            cpu.setdefault("official", []).append(time.process_time() - cpu0)
        for precision, model in ours.items():
            start, cpu0 = time.perf_counter(), time.process_time()
            results[precision] = AutomaticMaskGenerator(model, **options).generate(image)
            times.setdefault(f"ours {precision}", []).append(time.perf_counter() - start)
            cpu.setdefault(f"ours {precision}", []).append(time.process_time() - cpu0)
    print(f"median of {args.repeats} (load average now {load()}):")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    for name, seconds in med.items():
        line = f"  {name:>10}: {seconds:7.2f} s  ({', '.join(f'{t:.2f}' for t in times[name])})"
        if "official" in med and name != "official":
            line += (
                f"   official / ours: {med['official'] / seconds:.2f}x (CPU time "
                f"{med_cpu['official'] / med_cpu[name]:.2f}x)"
            )
            precision = name.split()[1]
            try:
                figures = parity.assert_same_masks(results["official"], results[precision])
                line += f"; same masks ({figures['n']}, min IoU {figures['min_iou']:.4f})"
            except AssertionError as e:
                line += f"; masks DIFFER: {e}"
        print(line)


if __name__ == "__main__":
    main()
