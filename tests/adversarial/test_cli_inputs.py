"""The command line against bad stacks, options and outputs. Every input is checked before the
model loads — these runs name a checkpoint that does not exist, so a check made too late would
exit 3 (weights) instead of 2 (input) — and nothing is written, changed or deleted."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from cli_helpers import FAST, NO_MODEL, refuses, run
from conftest import moving_disc, snapshot

from napari_sam2 import weights
from napari_sam2.cli import main

refused = pytest.mark.refused
handled = pytest.mark.handled
pytestmark = pytest.mark.usefixtures("cli_env")


# ------------------------------------------------------------------------------ data loss
@refused
@pytest.mark.parametrize(
    ("output", "match"),
    [
        ("exp.zarr", "contains the input exp.zarr/raw: writing it would delete the input"),
        ("exp.zarr/raw/labels.zarr", "lies inside the input exp.zarr/raw"),
        ("exp.zarr/raw/../raw/labels.tif", "lies inside the input exp.zarr/raw"),
        ("exp.zarr/raw/", "raw_labels.tif lies inside the input exp.zarr/raw"),  # a folder
    ],
    ids=["group-around-input", "inside-input", "inside-by-another-name", "input-as-folder"],
)
def test_an_output_never_replaces_or_nests_in_its_input(tmp_path, capsys, output, match):
    group = zarr.open_group(tmp_path / "exp.zarr", mode="w")
    group.create_array("raw", shape=(4, 40, 56), dtype="uint16")[:] = moving_disc(4, dtype="u2")
    group.create_array("notes", shape=(3,), dtype="int32")[:] = [1, 2, 3]
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
    argv = ["segment", "exp.zarr/raw", "-p", "p.csv", "-o", output, "--overwrite"]
    refuses([*argv, *NO_MODEL, *FAST], capsys, tmp_path, match)
    assert zarr.open_group(tmp_path / "exp.zarr", mode="r")["notes"][:].tolist() == [1, 2, 3]


@refused
def test_a_tiff_output_that_is_its_input(data, tmp_path, capsys):
    tif, csv = data
    argv = ["segment", tif, "-p", csv, "-o", tmp_path / "." / "s.tif", "--overwrite"]
    refuses([*argv, *NO_MODEL, *FAST], capsys, tmp_path, "is the input")


# ------------------------------------------------------------------------------ inputs
@refused
@pytest.mark.parametrize(
    ("array", "options", "match"),
    [
        (np.zeros((4, 40, 56), np.complex64), [], "complex data"),
        (np.full((4, 40, 56), np.nan, np.float32), [], "frame 0: the frame contains 2240 NaN"),
        (np.zeros((4, 40, 56, 2), np.uint16), ["--channel", "2"], "channel 2 is out of range"),
        (np.zeros((4, 40, 56, 2), np.uint16), ["--channel", "-1"], "channel -1 is out of range"),
        (np.zeros((4, 5, 56), np.uint8), [], "at least 8x8 pixels"),
        (moving_disc(4), ["--start", "100"], "--start 100 is out of range: the stack has 4"),
        (moving_disc(4), ["--stop", "-2"], "--stop -2 is out of range"),
        (moving_disc(4), ["--direction", "backward", "--start", "0", "--stop", "3"], "cannot go"),
        (moving_disc(4), ["--spill-dir", "nowhere"], "--spill-dir nowhere does not exist"),
    ],
    ids=["complex", "nan", "channel", "negative-channel", "too-small", "start", "stop",
         "direction", "spill-dir"],
)  # fmt: skip
def test_bad_stacks_and_options_exit_2_before_the_model(tmp_path, capsys, array, options, match):
    np.save(tmp_path / "s.npy", array)
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
    argv = ["segment", "s.npy", "-p", "p.csv", "-o", "out.tif", *options]
    refuses([*argv, *NO_MODEL, *FAST], capsys, tmp_path, match)


@refused
@pytest.mark.parametrize(
    ("output", "match"),
    [
        ("missing/out.tif", "output folder missing does not exist"),
        ("p.csv/out.tif", "output folder p.csv is not a folder"),
        ("out.png", "must end in .tif, .tiff or .zarr"),
    ],
)
def test_outputs_that_cannot_be_written_exit_2_before_the_model(
    data, tmp_path, capsys, output, match
):
    tif, csv = data
    argv = ["segment", tif, "-p", csv, "-o", output]
    refuses([*argv, *NO_MODEL, *FAST], capsys, tmp_path, match)


@refused
@pytest.mark.parametrize(
    ("obj_id", "match"),
    [
        (2**64, "ids.csv, line 2: obj_id 18446744073709551616 is too large for any label"),
        (0, "ids.csv, line 2: obj_id must be a positive integer"),
    ],
)
def test_ids_no_label_holds_exit_2(data, tmp_path, capsys, obj_id, match):
    tif, _ = data
    (tmp_path / "ids.csv").write_text(f"frame,obj_id,row,col\n0,{obj_id},15,20\n")
    argv = ["segment", tif, "-p", "ids.csv", "-o", "out.tif"]
    refuses([*argv, *NO_MODEL, *FAST], capsys, tmp_path, match)


def _as_unprivileged_user(fn) -> tuple[int, str]:
    """``fn()``'s return value and stderr, run as a user without root's power to write
    anywhere: root ignores a folder's permissions, so for root the call runs in a forked child
    that drops to ``nobody`` first (everything it needs is already imported)."""
    if os.geteuid() != 0:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return fn(), err.getvalue()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run, report, and leave without any cleanup of pytest's
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = fn()
            os.write(write, json.dumps([code, err.getvalue()]).encode())
        except BaseException as e:
            os.write(write, json.dumps([-1, repr(e)]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        payload = f.read()
    os.waitpid(pid, 0)
    code, err = json.loads(payload)
    return code, err


@refused
def test_an_unwritable_output_folder_exits_2_before_the_model():
    with tempfile.TemporaryDirectory() as tmp:  # under /tmp: open to every user, unlike tmp_path
        root = Path(tmp)
        tifffile.imwrite(root / "s.tif", moving_disc(4), photometric="minisblack")
        (root / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
        (root / "locked").mkdir(mode=0o555)
        root.chmod(0o755)
        before = snapshot(root)
        argv = ["segment", root / "s.tif", "-p", root / "p.csv", "-o", root / "locked" / "o.tif"]
        code, err = _as_unprivileged_user(lambda: main([str(a) for a in [*argv, *NO_MODEL, *FAST]]))
        assert code == 2, err
        assert "output folder" in err and "locked is not writable (permission denied)" in err
        assert snapshot(root) == before


@refused
def test_an_unreadable_stack_exits_2():
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tifffile.imwrite(root / "s.tif", moving_disc(4), photometric="minisblack")
        (root / "s.tif").chmod(0o600)
        (root / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
        root.chmod(0o777)  # the output folder is writable: only the stack is out of reach
        argv = ["segment", root / "s.tif", "-p", root / "p.csv", "-o", root / "o.tif"]
        code, err = _as_unprivileged_user(lambda: main([str(a) for a in [*argv, *NO_MODEL, *FAST]]))
        assert code == 2, err
        assert "permission denied" in err.lower() and "s.tif" in err
        assert not (root / "o.tif").exists()


# ------------------------------------------------------------------------------ weights
@refused
def test_an_empty_checkpoint_exits_3(data, tmp_path, capsys):
    tif, csv = data
    (tmp_path / "empty.pt").write_bytes(b"")
    argv = ["segment", tif, "-p", csv, "-o", "out.tif", "--checkpoint", "empty.pt", *FAST]
    err = refuses(argv, capsys, tmp_path, "empty.pt (an empty file)", code=3)
    assert "Download it again" in err


@refused
def test_a_device_that_is_not_there_exits_2(data, tmp_path, capsys):
    tif, csv = data
    argv = ["segment", tif, "-p", csv, "-o", "out.tif", *NO_MODEL, "--quiet", "--device", "gpu0"]
    refuses(argv, capsys, tmp_path, "'gpu0' is not a device name; devices on this machine: cpu")


# ------------------------------------------------------------------------------ runs
@handled
def test_ids_up_to_2_32_minus_1_are_written_and_summarised(
    data, tmp_path, capsys, random_tiny_checkpoint
):
    tif, _ = data
    big = 2**32 - 1
    (tmp_path / "ids.csv").write_text(f"frame,obj_id,row,col\n0,{big},15,20\n0,3,30,45\n")
    argv = ["segment", tif, "-p", "ids.csv", "-o", "out.tif"]
    code = main([*map(str, argv), "--checkpoint", str(random_tiny_checkpoint), *FAST])
    out = capsys.readouterr().out
    assert code == 0
    labels = tifffile.imread(tmp_path / "out.tif")
    assert labels.dtype == np.uint32 and set(np.unique(labels)) <= {0, 3, big}
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(rows) == {"3", str(big)}


@refused
def test_a_file_size_limit_is_an_io_error_that_keeps_the_previous_output(
    tmp_path, random_tiny_checkpoint
):
    tifffile.imwrite(tmp_path / "s.tif", moving_disc(4, 200, 240), photometric="minisblack")
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
    previous = np.full((4, 200, 240), 9, np.uint16)
    tifffile.imwrite(tmp_path / "out.tif", previous, photometric="minisblack")
    limit = 256 * 1024

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "napari_sam2.cli", "segment", "s.tif", "-p", "p.csv", "-o",
         "out.tif", "--overwrite", "--checkpoint", str(random_tiny_checkpoint), *FAST],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size,
        env={**os.environ, weights.CACHE_ENV: str(tmp_path / "cache")},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "I/O error" in proc.stderr and "File too large" in proc.stderr
    assert "previous output at that path is kept" in proc.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "p.csv", "s.tif"]


@refused
def test_view_without_a_display_says_how_to_get_one(monkeypatch, capsys):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    code, err = run(["view", *NO_MODEL], capsys)
    assert code == 2
    assert "napari needs a display" in err and "xvfb-run" in err and "segment" in err


@refused
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_nan_frame_found_mid_run_exits_2_and_keeps_the_previous_output(
    tmp_path, capsys, random_tiny_checkpoint, suffix
):
    stack = moving_disc(20, dtype=np.float32, value=200)
    stack[3, 5, 5] = np.nan  # not among the frames that set the window: found when reached
    np.save(tmp_path / "s.npy", stack)
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
    out = tmp_path / f"out{suffix}"
    if suffix == ".zarr":
        zarr.open_array(out, mode="w", shape=(2,), dtype="u1")[:] = [4, 2]
    else:
        tifffile.imwrite(out, np.full((20, 40, 56), 4, np.uint16), photometric="minisblack")
    before = snapshot(tmp_path)
    argv = ["segment", "s.npy", "-p", "p.csv", "-o", out.name, "--overwrite", "--direction"]
    code, err = run([*argv, "forward", "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 2, err
    assert "frame 3: the frame contains 1 NaN" in err and "np.nan_to_num" in err
    assert snapshot(tmp_path) == before  # the old output, untouched; no partial file
