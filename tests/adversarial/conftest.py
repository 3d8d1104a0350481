"""The adversarial suite: what a careless or unlucky user feeds the Python API and the command
line. Every test is marked either ``refused`` (bad input: a clear error of a documented type
whose message names the problem, and nothing written, lost or changed) or ``handled`` (unusual
but valid input: it just works, with the right result). The real network with random weights at
small sizes; nothing is mocked.

Counts: ``pytest tests/adversarial -m refused --collect-only -q`` (and ``-m handled``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256): compare before and after to show
    that nothing was written, changed or deleted."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def moving_disc(t: int = 6, h: int = 40, w: int = 56, dtype=np.uint8, value: int = 200):
    """A bright disc moving over a noisy background."""
    rr, cc = np.mgrid[:h, :w]
    stack = np.zeros((t, h, w), dtype=dtype)
    for i in range(t):
        stack[i][(rr - 15 - i % 10) ** 2 + (cc - 20 - i % 15) ** 2 < 8**2] = value
    noise = np.random.default_rng(0).integers(0, max(2, value // 7), stack.shape)
    return stack + noise.astype(dtype)


def tracker_state(tracker) -> tuple:
    """What a refused call must leave unchanged."""
    return (tracker.obj_ids, tracker.prompted_frames(), tracker.memory_stats())


@pytest.fixture
def disc_stack():
    return moving_disc()


@pytest.fixture
def data(tmp_path):
    """A 4-frame uint16 TIFF and a prompts CSV for it (the command-line tests)."""
    import tifffile

    tifffile.imwrite(
        tmp_path / "s.tif", moving_disc(4, dtype=np.uint16, value=3000), photometric="minisblack"
    )
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col,label\n0,1,15,20,1\n")
    return tmp_path / "s.tif", tmp_path / "p.csv"
