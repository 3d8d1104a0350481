"""CUDA check: our implementation on a GPU against itself on the CPU, and GPU timings.

    python benchmarks/cuda_check.py [--frames 24] [--objects 2]

Same random weights (official checkpoint format, loaded with load_model on each device) and
inputs on both devices; prints the largest logit difference of ImagePredictor and of
VideoTracker (every frame), and seconds per image embedding and per tracked frame on the GPU.
fp32 for the comparison (TF32 disabled, so differences show the implementation, not the
precision); then the fast modes: precision="bf16", without and with compile=True.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import napari_sam2 as ns
from napari_sam2.model import CONFIGS, SAM2Model


def clip(n: int, h: int = 480, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:h, :w]
    frames = rng.integers(0, 60, (n, h, w, 3)).astype(np.uint8)
    for t in range(n):
        frames[t][(rr - 160 - 2 * t) ** 2 + (cc - 200 - 3 * t) ** 2 < 60**2] += 150
        frames[t][(rr - 330) ** 2 + (cc - 450 + 2 * t) ** 2 < 45**2] += 100
    return frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--cpu-frames", type=int, default=6, help="frames compared with the CPU")
    args = p.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")

    torch.manual_seed(0)
    model = SAM2Model(CONFIGS["sam2.1_hiera_tiny"])
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.02 * torch.randn_like(prm))
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias += 1.0
    ckpt = Path(tempfile.mkdtemp()) / "tiny.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    cpu = ns.load_model("sam2.1_hiera_tiny", checkpoint=ckpt, device="cpu")
    gpu = ns.load_model("sam2.1_hiera_tiny", checkpoint=ckpt)  # device=None picks CUDA
    assert gpu.device.type == "cuda", gpu.device

    frames = clip(args.frames)
    clicks = [(160, 200), (330, 450), (100, 550)][: args.objects]

    # ImagePredictor
    out = {}
    for name, m in (("cpu", cpu), ("gpu", gpu)):
        pred = ns.ImagePredictor(m)
        pred.set_image(frames[0])
        out[name] = pred.predict(points=[clicks[0]], labels=[1]).logits
    print(f"ImagePredictor: max |logit cpu - gpu| = {np.abs(out['cpu'] - out['gpu']).max():.2e}")
    pred = ns.ImagePredictor(gpu)
    pred.set_image(frames[1])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for t in range(2, 12):
        pred.set_image(frames[t])
    torch.cuda.synchronize()
    print(f"GPU set_image: {(time.perf_counter() - t0) / 10 * 1000:.1f} ms per 1024² image")

    # VideoTracker, CPU vs GPU on the first frames
    results = {}
    for name, m, n in (("cpu", cpu, args.cpu_frames), ("gpu", gpu, args.cpu_frames)):
        tracker = ns.VideoTracker(m, frames[:n])
        for k, c in enumerate(clicks, start=1):
            tracker.add_prompt(0, k, points=[c], labels=[1])
        results[name] = [r.logits for r in tracker.propagate("forward")]
    worst = max(np.abs(a - b).max() for a, b in zip(results["cpu"], results["gpu"]))
    present = np.mean([(r > 0).mean() for r in results["gpu"]])
    print(
        f"VideoTracker ({args.cpu_frames} frames, {args.objects} objects): "
        f"max |logit cpu - gpu| = {worst:.2e} (mask fraction {present:.2f})"
    )

    # GPU tracking speed and memory over the whole clip
    tracker = ns.VideoTracker(gpu, frames)
    for k, c in enumerate(clicks, start=1):
        tracker.add_prompt(0, k, points=[c], labels=[1])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    n = 0
    for _ in tracker.propagate("forward"):
        n += 1
        if n == 4:
            torch.cuda.synchronize()
            t4 = time.perf_counter()
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(
        f"GPU tracking: {(t1 - t4) / (n - 4) * 1000:.1f} ms/frame over frames 4..{n - 1}, "
        f"{args.objects} objects; peak CUDA memory {peak:.0f} MiB; {tracker.memory_stats()}"
    )

    def gpu_ms_per_frame(model, label: str) -> list:
        tracker = ns.VideoTracker(model, frames)
        for k, c in enumerate(clicks, start=1):
            tracker.add_prompt(0, k, points=[c], labels=[1])
        logits, n = [], 0
        for r in tracker.propagate("forward"):
            logits.append(r.logits)
            n += 1
            if n == 4:
                torch.cuda.synchronize()
                start = time.perf_counter()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / (n - 4) * 1000
        print(f"GPU {label}: {ms:.1f} ms/frame over frames 4..{n - 1}")
        return logits

    for precision, compile_ in (("bf16", False), ("bf16", True)):
        fast = ns.load_model(
            "sam2.1_hiera_tiny", checkpoint=ckpt, precision=precision, compile=compile_
        )
        label = f"{precision}{' + compile' if compile_ else ''}"
        if compile_:
            gpu_ms_per_frame(fast, f"{label} (warm-up, compiling)")
        fast_logits = gpu_ms_per_frame(fast, label)
        agree = np.mean([((a > 0) == (b > 0)).mean() for a, b in zip(fast_logits, results["gpu"])])
        print(
            f"{label}: mask agreement with fp32 on the first {args.cpu_frames} frames {agree:.4f}"
        )


if __name__ == "__main__":
    main()
