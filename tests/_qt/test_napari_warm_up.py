"""napari's first rectangle costs no compilation once the widget is open: the widget compiles
napari's numba triangulation in a background thread (_qt/napari_warm_up.py). Checked in a fresh
numba cache (a subprocess: numba's compilations live for the process), where the first
rectangle used to freeze napari for seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.display
HERE = Path(__file__).parent


def test_the_first_rectangle_is_drawn_without_compiling_in_a_fresh_numba_cache(tmp_path):
    env = {
        **os.environ,
        "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
        "PYTHONPATH": os.pathsep.join([str(HERE.parents[1] / "src"), str(HERE)]),
    }
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    done = subprocess.run(
        [sys.executable, str(HERE / "first_rectangle.py")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # the outline's edge mesh was made before anything was drawn ...
    assert "generate_2D_edge_meshes" in seen["before"], seen
    # ... and drawing compiled nothing more
    assert seen["compiled_drawing"] == [] and seen["after"] == seen["before"], seen
    # the compilations (a fresh cache: all of them) ran off the GUI thread
    threads = {thread for _, thread in seen["compiled_before"]}
    assert seen["compiled_before"] and "MainThread" not in threads, seen
