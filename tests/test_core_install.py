"""The core install (``pip install napari-sam2``, no napari, magicgui, qtpy or Qt binding):
``import napari_sam2``, ``segment --help`` and a small segment work, and ``view`` says which
extra it needs. A meta-path blocker makes those packages unimportable in a fresh interpreter,
as they are where they are not installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import tifffile
from test_cli import FAST, moving_disc

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "npe2")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def run_core(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "core.py"
    script.write_text(BLOCKER + textwrap.dedent(code))
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(Path(__file__).parent)])}
    env["NAPARI_SAM2_CACHE"] = str(tmp_path / "cache")
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )


def test_core_imports_and_segments_without_napari_or_qt(random_tiny_checkpoint, tmp_path):
    stack = tmp_path / "cells.tif"
    tifffile.imwrite(stack, moving_disc(3), photometric="minisblack")
    csv = tmp_path / "p.csv"
    csv.write_text("frame,obj_id,row,col,label\n0,1,20,15,1\n")
    out = tmp_path / "labels.ome.zarr"
    argv = ["segment", stack, "-p", csv, "-o", out, "--checkpoint", random_tiny_checkpoint, *FAST]
    result = run_core(
        f"""
        import sys
        try:
            import napari  # noqa: F401
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("the blocker did not block napari")
        import napari_sam2
        from napari_sam2.cli import main
        try:
            main(["segment", "--help"])
        except SystemExit as e:
            assert e.code == 0, e.code
        code = main({[str(a) for a in argv]!r})
        assert code == 0, code
        code = main(["view", {str(stack)!r}])
        assert code == 2, code
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("napari", "magicgui", "qtpy", "PyQt6"))
        assert not loaded, loaded
        print("CORE OK")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CORE OK" in result.stdout
    assert "usage: napari-sam2 segment" in result.stdout
    assert "pip install 'napari-sam2[all]'" in result.stderr  # what `view` needs, said
    import zarr

    labels = np.asarray(zarr.open_group(str(out), mode="r")["sam2/0"])
    assert labels.shape == (3, 48, 64) and labels.any()
