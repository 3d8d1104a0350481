"""Ending a running ``segment`` from outside: SIGTERM (what ``kill``, ``timeout`` and SLURM send)
and SIGINT (Ctrl+C) clean up like any error — no hidden partial label file, no spilled tracking
memory left on disk, no output under the final name — and exit 143 / 130 as documented."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import moving_disc

from napari_sam2 import weights

pytestmark = pytest.mark.refused


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_mid_run_leaves_nothing_behind(tmp_path, random_tiny_checkpoint, sig, code, word):
    np.save(tmp_path / "s.npy", moving_disc(400))
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n0,2,30,40\n")
    spill = tmp_path / "spill"
    spill.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_sam2.cli", "segment", "s.npy", "-p", "p.csv", "-o",
         "out.tif", "--direction", "forward", "--spill-dir", "spill", "--checkpoint",
         str(random_tiny_checkpoint), "--image-size", "128", "--device", "cpu", "--quiet"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        env={**os.environ, weights.CACHE_ENV: str(tmp_path / "cache")},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list(spill.glob("napari-sam2-memory-*/*.pt")):  # old frames spilled to disk
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "tracking never spilled memory to disk"
            time.sleep(0.05)
        assert (tmp_path / ".out.tif.partial").exists()  # the labels being written
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert word in stderr and "no partial output was kept" in stderr and "Traceback" not in stderr
    assert list(spill.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "s.npy", "spill"]
