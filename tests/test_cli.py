"""The ``napari-sam2`` command line, run in-process through ``main(argv)`` (and once as a real
process for the exit code): the real network at a 128-pixel input with a random-weight
checkpoint in the official format, real files, a real HTTP server for downloads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from local_server import LocalServer, closed_port_url

from napari_sam2 import weights
from napari_sam2.cli import main

FAST = ["--image-size", "128", "--device", "cpu", "--quiet"]
PROMPTS = (  # a click for object 1 and a box for object 2, in one file
    "frame,obj_id,row,col,label,min_row,min_col,max_row,max_col\n"
    "0,1,20,15,1,,,,\n"
    "0,2,,,,30,40,44,60\n"
)


def moving_disc(frames: int = 4, shape=(48, 64)) -> np.ndarray:
    """A bright disc moving right over a dim background, uint16."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    stack = [((rows - 20) ** 2 + (cols - 15 - 8 * t) ** 2 < 64) * 3000 + 500 for t in range(frames)]
    return np.stack(stack).astype(np.uint16)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache, never skip hashes by accident."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(weights.SKIP_HASH_ENV, raising=False)


@pytest.fixture
def files(tmp_path):
    tif = tmp_path / "disc.tif"
    tifffile.imwrite(tif, moving_disc(), photometric="minisblack")
    csv = tmp_path / "prompts.csv"
    csv.write_text(PROMPTS)
    return tif, csv


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tiff_to_label_tiff(files, random_tiny_checkpoint, tmp_path, capsys):
    tif, csv = files
    out = tmp_path / "labels.tif"
    code, stdout, stderr = run(
        [
            "segment",
            tif,
            "--prompts",
            csv,
            "-o",
            out,
            "--checkpoint",
            random_tiny_checkpoint,
            *FAST,
        ],
        capsys,
    )
    assert code == 0, stderr
    labels = tifffile.imread(out)
    assert labels.shape == (4, 48, 64) and labels.dtype == np.uint16
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert "2 objects, 4 frames (0-3) of 4" in stdout
    assert [line.split()[0] for line in stdout.splitlines()[2:]] == ["1", "2"]  # per object
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disc.tif", "labels.tif", "prompts.csv"]
    # the same output again is refused unless --overwrite
    argv = ["segment", tif, "--prompts", csv, "-o", out, "--checkpoint", random_tiny_checkpoint]
    code, _, stderr = run([*argv, *FAST], capsys)
    assert code == 2 and "labels.tif exists" in stderr and "--overwrite" in stderr


def test_npy_4d_with_axis_and_index_to_zarr(random_tiny_checkpoint, tmp_path, capsys):
    data = np.stack([moving_disc(3), moving_disc(3)[::-1]])  # (Z=2, T=3, 48, 64): track T at z=1
    np.save(tmp_path / "tz.npy", data)
    csv = tmp_path / "p.csv"
    csv.write_text("frame,obj_id,row,col\n2,7,20,31\n")  # label defaults to positive
    argv = ["segment", tmp_path / "tz.npy", "-p", csv, "-o", tmp_path / "tz.zarr"]
    code, _, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 2 and "--axis" in stderr and "--index" in stderr  # ambiguous without them
    code, stdout, stderr = run(
        [*argv, "--axis", "1", "--index", "1", "--checkpoint", random_tiny_checkpoint, *FAST],
        capsys,
    )
    assert code == 0, stderr
    labels = zarr.open(str(tmp_path / "tz.zarr"), mode="r")
    assert labels.shape == (3, 48, 64) and labels.dtype == np.uint16
    assert "1 objects, 3 frames (0-2)" in stdout


def test_zarr_input_and_frame_range(random_tiny_checkpoint, tmp_path, capsys):
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=(4, 48, 64), dtype=np.uint16)
    z[:] = moving_disc()
    csv = tmp_path / "p.csv"
    csv.write_text("frame,obj_id,row,col,label\n1,1,20,23,positive\n")
    out = tmp_path / "out.tif"
    argv = ["segment", tmp_path / "in.zarr", "-p", csv, "-o", out, "--start", 1, "--stop", 2]
    code, stdout, stderr = run(
        [*argv, "--direction", "forward", "--checkpoint", random_tiny_checkpoint, *FAST], capsys
    )
    assert code == 0, stderr
    labels = tifffile.imread(out)
    assert labels.shape == (4, 48, 64)
    assert not labels[[0, 3]].any()  # outside the range nothing is written
    assert "2 frames (1-2) of 4" in stdout


def test_several_stacks_by_glob_into_a_folder(random_tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(data / f"{name}.tif", moving_disc(2), photometric="minisblack")
        (data / f"{name}.csv").write_text("frame,obj_id,row,col,label\n0,1,20,15,1\n")
    out = tmp_path / "out"
    argv = ["segment", str(data / "*.tif"), "--prompts", data, "-o", out]
    code, stdout, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "b_labels.tif"]
    assert tifffile.imread(out / "a_labels.tif").shape == (2, 48, 64)
    assert "done: 2 stacks, 4 frames" in stdout


def test_napari_points_csv_is_accepted(files, random_tiny_checkpoint, tmp_path, capsys):
    import napari.layers
    import npe2

    npe2.PluginManager.instance().discover()  # napari's own CSV writer, without a viewer
    points = napari.layers.Points(
        np.array([[0, 20, 15], [0, 30, 50], [1, 22, 24]]),
        features={"obj_id": [1, 2, 1], "positive": [True, True, False]},
    )
    csv = tmp_path / "points.csv"
    assert points.save(str(csv))
    assert csv.read_text().splitlines()[0] == "index,axis-0,axis-1,axis-2,obj_id,positive"
    tif, _ = files
    argv = ["segment", tif, "-p", csv, "-o", tmp_path / "out.tif"]
    code, stdout, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, stderr
    assert "2 objects" in stdout


def test_bad_csv_row_names_the_line(files, tmp_path, capsys):
    tif, _ = files
    csv = tmp_path / "bad.csv"
    csv.write_text("frame,obj_id,row,col,label\n0,1,20,15,1\n\n0,1,20,15,maybe\n")
    code, _, stderr = run(["segment", tif, "-p", csv, "-o", tmp_path / "o.tif"], capsys)
    assert code == 2
    assert "bad.csv, line 4: label must be 1 / 0 exactly" in stderr and "got 'maybe'" in stderr
    assert "Traceback" not in stderr
    csv.write_text("frame,obj_id,row,col,label\n0,1,20,15,1\n9,1,20,15,1\n")  # 4 frames only
    code, _, stderr = run(["segment", tif, "-p", csv, "-o", tmp_path / "o.tif"], capsys)
    assert code == 2 and "bad.csv, line 3: frame 9 is out of range" in stderr
    csv.write_text("frame,obj_id,row,col,label\n0,1,20,99,1\n")  # col 99 of a 64-wide image
    code, _, stderr = run(["segment", tif, "-p", csv, "-o", tmp_path / "o.tif"], capsys)
    assert code == 2 and "bad.csv, line 2: point (row=20, col=99) lies outside" in stderr


def test_missing_stack_is_a_usage_error(files, tmp_path, capsys):
    _, csv = files
    code, _, stderr = run(["segment", tmp_path / "nope.tif", "-p", csv, "-o", "o.tif"], capsys)
    assert code == 2 and "stack not found" in stderr and "nope.tif" in stderr
    code, _, stderr = run(["segment", str(tmp_path / "*.zarr"), "-p", csv, "-o", "o"], capsys)
    assert code == 2 and "no file matches" in stderr
    assert run(["segment", "x.tif"], capsys)[0] == 2  # argparse: --prompts missing
    code, _, stderr = run(["segment", "x.tif", "-p", csv, "-o", "o", "--image-size", 100], capsys)
    assert code == 2 and "multiple of 64" in stderr


def test_exit_codes_of_a_real_process(files, tmp_path):
    _, csv = files
    cmd = [sys.executable, "-m", "napari_sam2.cli", "segment", str(tmp_path / "nope.tif")]
    proc = subprocess.run(
        [*cmd, "-p", str(csv), "-o", str(tmp_path / "o.tif")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NAPARI_SAM2_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"napari-sam2: error: stack not found: {tmp_path / 'nope.tif'}"


def test_offline_without_checkpoint_exits_3(files, tmp_path, monkeypatch, capsys):
    url = closed_port_url("sam2.1_hiera_tiny.pt")
    name = "sam2.1_hiera_tiny"
    monkeypatch.setitem(weights.REGISTRY, name, weights.Weights(name, url, 100, None))
    tif, csv = files
    code, _, stderr = run(["segment", tif, "-p", csv, "-o", tmp_path / "o.tif", *FAST], capsys)
    assert code == 3
    assert url in stderr and str(tmp_path / "cache" / "sam2.1_hiera_tiny.pt") in stderr
    assert "--checkpoint PATH" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "o.tif").exists()
    code, _, stderr = run(
        ["segment", tif, "-p", csv, "-o", "o.tif", "--checkpoint", "no.pt"], capsys
    )
    assert code == 3 and "checkpoint file not found: no.pt" in stderr


def test_download_and_info(tmp_path, monkeypatch, capsys):
    payload = os.urandom(5000)
    name = "sam2.1_hiera_small"
    with LocalServer() as server:
        server.files["s.pt"] = payload
        monkeypatch.setitem(weights.REGISTRY, name, weights.Weights(name, server.url("s.pt"), 5000))
        code, stdout, stderr = run(["download", name, "-q"], capsys)
        assert code == 0, stderr
        assert stdout.strip() == f"{name}: {tmp_path / 'cache' / 's.pt'} (downloaded)"
        code, stdout, _ = run(["download", name, "-q"], capsys)
        assert code == 0 and "(already cached)" in stdout and server.hits["s.pt"] == 1
    code, stdout, _ = run(["info"], capsys)
    assert code == 0
    assert f"cache: {tmp_path / 'cache'} ($NAPARI_SAM2_CACHE)" in stdout
    assert "device: cpu" in stdout or "device: cuda" in stdout or "device: mps" in stdout
    lines = {line.split()[0]: line for line in stdout.splitlines() if line.startswith("  ")}
    assert "cached" in lines[name].split() and "not cached" in lines["sam2.1_hiera_tiny"]
    assert "torch" in stdout and "napari-sam2" in stdout
    assert run(["download", "sam3"], capsys)[0] == 2
    monkeypatch.setitem(
        weights.REGISTRY, "sam2_hiera_tiny", weights.Weights("x", closed_port_url("t.pt"))
    )
    code, _, stderr = run(["download", "sam2_hiera_tiny", "-q"], capsys)
    assert code == 3 and "t.pt" in stderr


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("napari-sam2")
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("napari-sam2 ")


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (RuntimeError("boom"), 1, "unexpected error: RuntimeError: boom"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_unexpected_errors_and_ctrl_c(files, monkeypatch, capsys, error, code, message):
    from napari_sam2.cli import segment

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(segment, "plan_jobs", fail)
    tif, csv = files
    argv = ["segment", tif, "-p", csv, "-o", "o.tif"]
    got, _, stderr = run(argv, capsys)
    assert got == code and message in stderr and "Traceback" not in stderr
    got, _, stderr = run(["--debug", *argv], capsys)
    assert got == code and "Traceback (most recent call last)" in stderr
    got, _, stderr = run([*argv, "--debug"], capsys)
    assert got == code and "Traceback (most recent call last)" in stderr


def test_view_fetches_weights_first_and_stops_offline_with_the_fix(tmp_path, monkeypatch, capsys):
    """The README's main job (`napari-sam2 view`) fails only at the download, clearly."""
    monkeypatch.setenv("DISPLAY", os.environ.get("DISPLAY", ":0"))  # a screen is not the issue
    name = "sam2.1_hiera_tiny"
    url = closed_port_url(f"{name}.pt")
    monkeypatch.setitem(weights.REGISTRY, name, weights.Weights(name, url, 100, None))
    assert main(["view", "--cache-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert url in err and str(tmp_path / f"{name}.pt") in err and "--checkpoint" in err
    assert main(["view", "--checkpoint", str(tmp_path / "missing.pt")]) == 3
    assert "missing.pt" in capsys.readouterr().err
