"""A giant lazy image stays lazy: a 20000 x 20000 uint16 zarr array (800 MB of pixels) is
prompted on tiles with less than 2 GiB of resident-memory growth, measured in a subprocess
(peak RSS, VmHWM) with the real network at a 128-pixel input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

GiB = 2**30

SCRIPT = r"""
import json, sys, time
import numpy as np, zarr

def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

from official import random_tiny
import napari_sam2 as ns

model = random_tiny(128, seed=2, object_bias=1.0)
image = zarr.open_array(sys.argv[1], mode="r")
p = ns.ImagePredictor(model, tiles="auto")
p.predict  # imports done
before = rss()
start = time.perf_counter()
p.set_image(image)
r = p.predict(points=[(10_050, 12_040)], labels=[1])
b = p.predict(box=(10_000, 12_000, 10_090, 12_090))
far = p.predict(points=[(19_990, 5)], labels=[1])
out = {
    "growth": peak_rss() - before,
    "seconds": time.perf_counter() - start,
    "shape": list(r.masks.shape),
    "tile": list(r.tile),
    "box_tile": list(b.tile),
    "far_tile": list(far.tile),
    "inside": int(r.masks.crop.sum()),
    "windows": len(p.grid),
    "embedded": len(p.windows_embedded),
}
print(json.dumps(out))
"""


def test_a_20000_squared_lazy_zarr_is_prompted_in_bounded_memory(tmp_path):
    import zarr

    side = 20_000
    path = tmp_path / "giant.zarr"
    z = zarr.create_array(
        path, shape=(side, side), chunks=(1000, 1000), dtype=np.uint16, fill_value=300
    )
    rr, cc = np.mgrid[:1000, :1000]
    block = np.full((1000, 1000), 300, np.uint16)
    block[(rr - 50) ** 2 + (cc - 40) ** 2 < 30**2] = 3000  # a bright disc at (10050, 12040)
    z[10_000:11_000, 12_000:13_000] = block  # one chunk written; the rest is the fill value
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "tests")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert out["growth"] < 2 * GiB, f"RSS grew by {out['growth'] / GiB:.2f} GiB"
    assert out["shape"] == [3, side, side]
    r0, c0, r1, c1 = out["tile"]
    assert (r1 - r0, c1 - c0) == (128, 128) and r0 <= 10_050 < r1 and c0 <= 12_040 < c1
    assert out["box_tile"][2] - out["box_tile"][0] == 128
    assert out["far_tile"] == [side - 128, 0, side, 128]
    assert out["embedded"] <= 3 and out["windows"] > 40_000


def test_masks_of_a_large_untiled_image_are_upsampled_in_strips_alike():
    """Above 4096² the untiled predictor thresholds full-size masks strip by strip (no (K, H, W)
    float array); the masks are those of one bilinear interpolation."""
    from napari_sam2.engine.image import _upsample

    torch.manual_seed(0)
    low = torch.randn(1, 64, 64) * 4
    shape = (4100, 4200)
    strips = _upsample(low, shape, 0.0)
    whole = F.interpolate(low[None], shape, mode="bilinear", align_corners=False)[0] > 0
    assert strips.shape == (1, *shape) and strips.dtype == bool
    assert (strips == whole.numpy()).mean() > 0.9999
