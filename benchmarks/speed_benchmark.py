"""Speed, ours against the official SAM2VideoPredictor in the same run, every case of issue 21:
short (8 frames of 240x320) and long (32 frames of 480x640) clips, 1 and 4 objects, a first
pass and a re-propagation after a correction, exact fp32 — and the machine's fp32 / bf16 rates.

    .venv/bin/python benchmarks/speed_benchmark.py [--clips 8x240x320 32x480x640]
        [--objects 1 4] [--repeats 3] [--size 1024] [--model sam2.1_hiera_tiny]
        [--precisions fp32 bf16] [--both] [--skip-official]

Objects are clicked on frame 0 of the synthetic clip of track_benchmark.py and tracked forward
through the clip (first pass, seconds per frame); then a negative click on frame N/2 for object 1
and the propagation again from there (re-propagation: the official predictor encodes every frame
again and tracks every object again; ours reads the embeddings it kept and keeps the records of
the objects not corrected, whose memories did not change). With several objects, a negative
click for every object on frame N/2 and the propagation again ("every object corrected": all of
them tracked again on both sides). Each repetition builds a fresh official predictor and a
fresh tracker and runs them one after the other (official, ours, official, ours, ...), so that a
machine shared with other work loads both alike; the ratios official / ours ("x faster") are
of the medians of the repetitions (of wall time, and of the process's CPU time, which a shared
machine disturbs less), and the load average before and after is printed. ``--both``
adds ours' ``both`` against a forward and a backward pass without kept embeddings. Runs by hand,
not in the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # official.py: builds the reference model
sys.path.insert(0, str(HERE))
from track_benchmark import NpyFrames, make_clip, official_predictor  # noqa: E402

PHASES = ("first pass", "re-propagation", "every object corrected")


def phases(objects: int) -> tuple[str, ...]:
    return PHASES if objects > 1 else PHASES[:2]


CPU = {}  # phase -> CPU seconds of the last timed() call (all threads of this process)


def timed(results, phase: str | None = None) -> tuple[int, float]:
    """Frames yielded by ``results`` and the wall seconds it took; the process's CPU seconds go
    to ``CPU[phase]`` (on a shared machine CPU time counts what was computed, not the wait)."""
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for _ in results:
        n += 1
    if phase is not None:
        CPU[phase] = (time.process_time() - cpu) / max(n, 1)
    return n, time.perf_counter() - start


def clicks(h: int, w: int, objects: int) -> list[tuple[int, int]]:
    """(row, col) of each object's click on frame 0: spread over the moving disc."""
    return [(h // 3 + 3 * (k // 2), w // 3 + 5 * (k % 2) - 2) for k in range(objects)]


def official_run(folder: Path, n: int, h: int, w: int, objects: int, args) -> dict:
    model = official_predictor(args.model, args.size, folder / "ckpt.pt")
    state = model.init_state(str(folder / "jpeg"))  # decodes every frame: not timed
    for k, (row, col) in enumerate(clicks(h, w, objects)):
        model.add_new_points_or_box(
            state, 0, k + 1, points=np.array([[col, row]], np.float32), labels=np.array([1])
        )
    frames, seconds = timed(model.propagate_in_video(state), "first pass")
    out = {"first pass": seconds / frames}
    mid = n // 2
    model.add_new_points_or_box(
        state, mid, 1, points=np.array([[5, 5]], np.float32), labels=np.array([0]),
        clear_old_points=False,
    )  # fmt: skip
    frames, seconds = timed(model.propagate_in_video(state, start_frame_idx=mid), "re-propagation")
    out["re-propagation"] = seconds / frames
    if objects > 1:
        for k in range(objects):
            model.add_new_points_or_box(
                state, mid, k + 1, points=np.array([[5, 9]], np.float32), labels=np.array([0]),
                clear_old_points=False,
            )  # fmt: skip
        phase = PHASES[2]
        frames, seconds = timed(model.propagate_in_video(state, start_frame_idx=mid), phase)
        out[phase] = seconds / frames
    return out | {f"{k} cpu": v for k, v in CPU.items()}


def our_model(folder: Path, args, precision: str):
    import torch

    from napari_sam2.model import CONFIGS, SAM2Model

    model = SAM2Model(CONFIGS[args.model].with_image_size(args.size))
    model.load_state_dict(torch.load(folder / "ckpt.pt", weights_only=True)["model"])
    return model.set_precision(precision)


def our_run(
    model, folder: Path, n: int, h: int, w: int, objects: int, object_batch: int | None = None
) -> dict:
    import napari_sam2 as ns

    frames = NpyFrames(folder / "frames.npy")
    tracker = ns.VideoTracker(model, frames, object_batch=object_batch)
    for k, click in enumerate(clicks(h, w, objects)):
        tracker.add_prompt(0, k + 1, points=[click], labels=[1])
    count, seconds = timed(tracker.propagate(), "first pass")
    out = {"first pass": seconds / count}
    mid = n // 2
    tracker.add_prompt(mid, 1, points=[(5, 5)], labels=[0])
    count, seconds = timed(tracker.propagate(start=mid), "re-propagation")
    out["re-propagation"] = seconds / count
    if objects > 1:
        for k in range(objects):
            tracker.add_prompt(mid, k + 1, points=[(9, 5)], labels=[0])
        count, seconds = timed(tracker.propagate(start=mid), PHASES[2])
        out[PHASES[2]] = seconds / count
    out["object batch"] = tracker.object_batch  # the tracker's own choice where none is given
    tracker.close()
    return out | {f"{k} cpu": v for k, v in CPU.items()}


def both_runs(model, folder: Path, n: int, h: int, w: int) -> dict:
    """``both`` from clicks on frames 1 and n-2 (the forward and the backward pass cross every
    frame in between: the kept embeddings encode those once) against a forward and a backward
    pass without kept embeddings."""
    import napari_sam2 as ns

    frames = NpyFrames(folder / "frames.npy")
    click = clicks(h, w, 1)[0]

    def prompted(**kwargs):
        t = ns.VideoTracker(model, frames, **kwargs)
        for f in (1, n - 2):
            t.add_prompt(f, 1, points=[click], labels=[1])
        return t

    both = prompted()
    count, seconds = timed(both.propagate("both"))
    both.close()
    without = prompted(embeddings=False, feature_cache=1)
    c1, s1 = timed(without.propagate("forward", start=1))
    c2, s2 = timed(without.propagate("backward", start=n - 2))
    without.close()
    return {"both": seconds / count, "forward + backward, no cache": (s1 + s2) / (c1 + c2)}


def machine_rates(repeats: int = 5, bf16: bool = True) -> dict[tuple[str, str], float]:
    """GFLOP/s on this machine: a square matrix product, a linear layer shaped like the image
    encoder's MLP, and torch's fused attention (SDPA) shaped like the memory attention's
    cross-attention (4096 queries, 7 x 4096 keys), in fp32 through torch (its MKL or BLAS: what
    Meta's code runs on), the two products and our attention
    (:func:`napari_sam2.model.products.attention`) in fp32 through oneDNN (what ours runs on),
    and all of them in bf16 (``bf16``: where the CPU has it natively; our attention is torch's
    fused kernel there unless the CPU lacks AMX); interleaved, medians."""
    import torch
    import torch.nn.functional as F

    from napari_sam2.model.products import attention, onednn_available, onednn_linear

    def case(dtype, onednn=False):
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(2048, 2048, generator=g, dtype=dtype) for _ in range(2))
        x = torch.randn(16384, 384, generator=g, dtype=dtype)
        wt = torch.randn(1536, 384, generator=g, dtype=dtype)
        q = torch.randn(1, 1, 4096, 256, generator=g, dtype=dtype)
        k = torch.randn(1, 1, 7 * 4096, 256, generator=g, dtype=dtype)
        ours = {"attention, ours": (lambda: attention(q, k, k), 4 * 4096 * 7 * 4096 * 256)}
        if onednn:
            bt = b.t().contiguous()
            return {
                "matmul 2048^2": (lambda: onednn_linear(a, bt), 2 * 2048**3),
                "linear 16384x384->1536": (lambda: onednn_linear(x, wt), 2 * 16384 * 384 * 1536),
            } | ours
        return {
            "matmul 2048^2": (lambda: a @ b, 2 * 2048**3),
            "linear 16384x384->1536": (lambda: F.linear(x, wt), 2 * 16384 * 384 * 1536),
            "SDPA 4096 x 28672 keys": (
                lambda: F.scaled_dot_product_attention(q, k, k),
                4 * 4096 * 7 * 4096 * 256,
            ),
        } | (ours if dtype != torch.float32 else {})

    cases = {"fp32": case(torch.float32)}
    if onednn_available():
        cases["fp32 oneDNN"] = case(torch.float32, onednn=True)
    if bf16:
        cases["bf16"] = case(torch.bfloat16)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for kind, ops in cases.items():
            for name, (fn, _) in ops.items():
                start = time.perf_counter()
                fn()
                times.setdefault((name, kind), []).append(time.perf_counter() - start)
    return {
        key: cases[key[1]][key[0]][1] / statistics.median(ts[1:]) / 1e9  # the first warms up
        for key, ts in times.items()
    }


@contextlib.contextmanager
def cpu_products(choice: str | None):
    """Ours with fp32 products through ``choice`` (None: the library's own choice)."""
    from napari_sam2.model.products import ENV

    before = os.environ.get(ENV)
    if choice is not None:
        os.environ[ENV] = choice
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", nargs="+", default=["8x240x320", "32x480x640"], help="NxHxW")
    p.add_argument("--objects", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="sam2.1_hiera_tiny")
    p.add_argument("--size", type=int, default=1024, help="network input size")
    p.add_argument("--precisions", nargs="+", default=["fp32"], help="ours: fp32, bf16, auto")
    p.add_argument("--both", action="store_true", help="also time ours' both with/without cache")
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--skip-rates", action="store_true")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--object-batch",
        type=int,
        nargs="+",
        default=[None],
        help="ours: objects computed together (default: the tracker's own choice); several "
        "values are each timed",
    )
    p.add_argument(
        "--products",
        nargs="+",
        default=[None],
        choices=["onednn", "torch"],
        help="ours: which library multiplies fp32 on the CPU (default: the library's own "
        "choice, napari_sam2.model.products); several values are each timed",
    )
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from official import build_official, save_checkpoint

    from napari_sam2.model.precision import native_bf16_cpu
    from napari_sam2.model.products import cpu_products as cpu_products_now

    torch.set_grad_enabled(False)
    print(
        f"{args.model}, {args.size}px input, torch {torch.__version__}, {os.cpu_count()} CPUs "
        f"({torch.get_num_threads()} threads), native bf16: {native_bf16_cpu()}, "
        f"fp32 products: {cpu_products_now()}, load average {load()}"
    )
    if not args.skip_rates:
        rates = machine_rates(bf16=native_bf16_cpu())
        for name in dict.fromkeys(k[0] for k in rates):
            # against torch's fp32 (our attention: against torch's fused fp32 kernel)
            base = rates.get((name, "fp32"), rates[("SDPA 4096 x 28672 keys", "fp32")])
            cells = [
                f"{kind} {rates[(name, kind)]:6.1f}"
                + ("" if kind == "fp32" else f" ({rates[(name, kind)] / base:.2f}x)")
                for kind in ("fp32", "fp32 oneDNN", "bf16")
                if (name, kind) in rates
            ]
            print(f"  {name:>24}: {', '.join(cells)} GFLOP/s")
    for clip in args.clips:
        n, h, w = (int(v) for v in clip.split("x"))
        with tempfile.TemporaryDirectory(prefix="sam2-speed-") as tmp:
            folder = make_clip(Path(tmp), n, h, w)
            save_checkpoint(build_official(args.model, video=True), folder / "ckpt.pt")
            models = {pr: our_model(folder, args, pr) for pr in args.precisions}
            for objects in args.objects:
                runs: dict[str, list[dict]] = {}
                for _ in range(args.repeats):
                    if not args.skip_official:
                        runs.setdefault("official", []).append(
                            official_run(folder, n, h, w, objects, args)
                        )
                    for pr, model in models.items():
                        for batch, products in itertools.product(args.object_batch, args.products):
                            name = f"ours {pr}" + ("" if batch is None else f" batch {batch}")
                            name += "" if products is None else f" {products}"
                            with cpu_products(products):
                                run = our_run(model, folder, n, h, w, objects, batch)
                            runs.setdefault(name, []).append(run)
                cases = phases(objects)
                keys = [*cases, *(f"{k} cpu" for k in cases)]
                med = {
                    name: {k: statistics.median(r[k] for r in rs) for k in keys}
                    for name, rs in runs.items()
                }
                print(f"\n{n} frames of {h}x{w}, {objects} object(s), median of {args.repeats}: "
                      f"seconds per frame (load average now {load()})")  # fmt: skip
                for name, m in med.items():
                    cells = ", ".join(f"{k} {m[k]:.3f}" for k in cases)
                    ratio = ""
                    if "official" in med and name != "official":
                        ratio = "   official / ours: " + ", ".join(
                            f"{k} {med['official'][k] / m[k]:.2f}x "
                            f"(CPU time {med['official'][k + ' cpu'] / m[k + ' cpu']:.2f}x)"
                            for k in cases
                        )
                    batch = runs[name][0].get("object batch")
                    if batch is not None and "batch" not in name:
                        name = f"{name} (batch {batch})"
                    print(f"  {name:>10}: {cells}{ratio}")
            if args.both:
                for pr, model in models.items():
                    r = both_runs(model, folder, n, h, w)
                    gain = r["forward + backward, no cache"] / r["both"]
                    print(f"  ours {pr}: both {r['both']:.3f} s/frame, {gain:.2f}x faster than "
                          "forward + backward without kept embeddings")  # fmt: skip


if __name__ == "__main__":
    main()
