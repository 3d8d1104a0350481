"""Many stacks at once (:func:`napari_sam2.segment_many`, ``segment --workers/--scheduler/
--resume``) on a real ``dask.distributed`` cluster of two worker processes on 127.0.0.1, with the
real network at a 128-pixel input and a random-weight checkpoint in the official format."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_cli import FAST, moving_disc, run

import napari_sam2 as ns
from napari_sam2 import weights
from napari_sam2.batch.dask_tasks import ClusterBars, ModelSpec, run_on_cluster
from napari_sam2.batch.plan import SegmentOptions, plan_jobs, prepare
from napari_sam2.io import InputError

distributed = pytest.importorskip("distributed", reason="the Dask tests need dask.distributed")
# (importorskip only guards an import error on a machine set up by hand: CI installs it.)

CLICK = "frame,obj_id,row,col,label\n0,1,20,15,1\n"
SIZE = {"image_size": 128, "device": "cpu", "progress": False}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each, on this machine (the nanny restarts a killed
    worker, so one cluster serves the whole module)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",  # any free port (None would still take 8787)
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def make_stacks(folder: Path, n: int = 3, frames: int = 3) -> list[Path]:
    """``n`` different small stacks, each with its prompts file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    stacks = []
    for i in range(n):
        data = moving_disc(frames + i)
        data = np.roll(data, 3 * i, axis=1)  # each stack its own content
        path = folder / f"s{i}.tif"
        tifffile.imwrite(path, data, photometric="minisblack")
        (folder / f"s{i}.csv").write_text(f"frame,obj_id,row,col,label\n0,1,{20 + 3 * i},15,1\n")
        stacks.append(path)
    return stacks


def labels_of(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*_labels.tif"))}


def test_cluster_labels_equal_serial_bit_for_bit(client, random_tiny_checkpoint, tmp_path):
    stacks = make_stacks(tmp_path / "data")
    common = dict(prompts=tmp_path / "data", checkpoint=random_tiny_checkpoint, **SIZE)
    here = ns.segment_many(stacks, out_dir=tmp_path / "here", **common)
    there = ns.segment_many(stacks, out_dir=tmp_path / "there", client=client, **common)
    assert here.ok and there.ok, (here.failed, there.failed)
    assert sorted(there.done) == sorted(stacks) and not there.skipped
    serial, dask = labels_of(tmp_path / "here"), labels_of(tmp_path / "there")
    assert sorted(dask) == ["s0_labels.tif", "s1_labels.tif", "s2_labels.tif"]
    for name in serial:
        assert serial[name].any(), name  # something was segmented
        np.testing.assert_array_equal(dask[name], serial[name], err_msg=name)
    # the stacks differ, so equal outputs are not one result written three times
    assert serial["s0_labels.tif"].shape != serial["s2_labels.tif"].shape
    # both workers' models are cached: a second batch loads nothing (the key is the spec)
    loaded = client.run(
        lambda: len(__import__("napari_sam2.batch.dask_tasks").batch.dask_tasks._models)
    )
    assert sum(loaded.values()) >= 1


def test_a_stack_with_bad_prompts_fails_alone(client, random_tiny_checkpoint, tmp_path):
    stacks = make_stacks(tmp_path / "data")
    (tmp_path / "data" / "s1.csv").write_text("frame,obj_id,row,col,label\n9,1,20,15,1\n")
    report = ns.segment_many(
        stacks,
        prompts=tmp_path / "data",
        out_dir=tmp_path / "out",
        client=client,
        checkpoint=random_tiny_checkpoint,
        **SIZE,
    )
    assert not report.ok
    assert sorted(report.done) == [stacks[0], stacks[2]]
    assert list(report.failed) == [stacks[1]]
    assert "frame 9" in report.failed[stacks[1]], report.failed
    assert sorted(labels_of(tmp_path / "out")) == ["s0_labels.tif", "s2_labels.tif"]
    assert "2 done, 1 failed" in report.summary()
    # strict (as the command line): nothing runs at all
    with pytest.raises(InputError, match="frame 9"):
        ns.segment_many(
            stacks,
            prompts=tmp_path / "data",
            out_dir=tmp_path / "strict",
            checkpoint=random_tiny_checkpoint,
            strict=True,
            **SIZE,
        )
    assert not (tmp_path / "strict").exists()


def test_a_read_error_while_running_is_reported_and_the_others_finish(
    client, random_tiny_checkpoint, tmp_path
):
    stacks = make_stacks(tmp_path / "data")
    # and a float stack with a NaN on frame 8, which the checks do not sample (0-3, 5-7, 9)
    frames = moving_disc(10).astype(np.float32)
    frames[8, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "data" / "s3.tif", frames, photometric="minisblack")
    (tmp_path / "data" / "s3.csv").write_text(CLICK)
    stacks.append(tmp_path / "data" / "s3.tif")
    options = SegmentOptions(image_size=128)
    jobs = plan_jobs(stacks, tmp_path / "data", tmp_path / "out", fmt="tif", to_folder=True)
    checked, failed, _ = prepare(jobs, options)
    assert len(checked) == 4 and not failed
    (tmp_path / "out").mkdir()
    # after the checks, the file of one stack goes bad (a disk, a network share)
    data = tifffile.imread(stacks[1])
    stacks[1].write_bytes(b"not a tiff any more")
    spec = ModelSpec("sam2.1_hiera_tiny", str(random_tiny_checkpoint), 128, "cpu")
    done, failed = run_on_cluster(client, spec, checked, options)
    assert sorted(done) == [stacks[0], stacks[2]]
    assert sorted(failed) == [stacks[1], stacks[3]]
    assert "s1.tif" in failed[stacks[1]], failed
    assert "frame 8" in failed[stacks[3]] and "NaN" in failed[stacks[3]], failed
    assert not (tmp_path / "out" / "s1_labels.tif").exists()
    assert not (tmp_path / "out" / "s3_labels.tif").exists()
    assert not list((tmp_path / "out").glob(".*partial"))  # no half-written file left
    assert data.shape == (4, 48, 64)


def test_a_worker_killed_mid_run_loses_nothing(client, random_tiny_checkpoint, tmp_path):
    """One worker process exits while it tracks a stack: Dask reruns that stack on a live
    worker (the nanny also restarts the dead one), so the batch completes, and its labels are
    those of an undisturbed run."""
    stacks = make_stacks(tmp_path / "data", n=3, frames=8)
    common = dict(prompts=tmp_path / "data", checkpoint=random_tiny_checkpoint, **SIZE)
    reference = ns.segment_many(stacks, out_dir=tmp_path / "here", **common)
    assert reference.ok
    killed = []

    def exit_soon():  # the process ends just after it answers (a plain os._exit never would)
        threading.Timer(0.2, os._exit, args=(1,)).start()

    def kill_a_busy_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                time.sleep(1.5)  # inside the task: model loaded, frames being tracked
                client.run(exit_soon, workers=busy[:1])
                killed.append(busy[0])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    report = ns.segment_many(stacks, out_dir=tmp_path / "there", client=client, **common)
    killer.join()
    assert killed, "no worker was busy: the test did not kill anything"
    assert report.ok, report.failed
    assert sorted(report.done) == sorted(stacks)
    expected, got = labels_of(tmp_path / "here"), labels_of(tmp_path / "there")
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert not list((tmp_path / "there").glob(".*partial"))
    client.wait_for_workers(2, timeout=60)  # the cluster heals for the next tests


def test_a_rerun_task_replaces_what_its_first_attempt_wrote(
    client, random_tiny_checkpoint, tmp_path
):
    """A worker can die after writing a stack's output and before reporting it: Dask reruns
    the task, which finds the output there. It must replace it, not fail with 'exists' (seen
    once in the killed-worker test)."""
    stacks = make_stacks(tmp_path / "data", n=1)
    options = SegmentOptions(image_size=128)
    jobs = plan_jobs(stacks, tmp_path / "data", tmp_path / "out", fmt="tif", to_folder=True)
    checked, failed, _ = prepare(jobs, options)  # no output yet: checks pass
    assert checked and not failed
    (tmp_path / "out").mkdir()
    first = tmp_path / "out" / "s0_labels.tif"
    tifffile.imwrite(first, np.full((3, 48, 64), 7, np.uint16), photometric="minisblack")
    spec = ModelSpec("sam2.1_hiera_tiny", str(random_tiny_checkpoint), 128, "cpu")
    done, failed = run_on_cluster(client, spec, checked, options)
    assert list(done) == stacks and not failed, failed
    assert not (tifffile.imread(first) == 7).all()  # the rerun's labels replaced it


def test_resume_redoes_only_missing_and_partial_stacks(random_tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data"
    make_stacks(data, n=4)
    out = tmp_path / "out"
    argv = ["segment", str(data / "*.tif"), "-p", data, "-o", out]
    argv += ["--checkpoint", random_tiny_checkpoint, *FAST]
    code, stdout, stderr = run(argv, capsys)
    assert code == 0, stderr
    first = labels_of(out)
    # an interrupted run: s1 never finished (only its temporary file exists), s2 was never
    # started, s3 is an output cut short (a copy that stopped midway); a file napari-sam2 did
    # not write is never replaced by --resume (tests/adversarial/test_cli_outputs.py)
    (out / "s1_labels.tif").rename(out / ".s1_labels.tif.partial")
    (out / "s2_labels.tif").unlink()
    with open(out / "s3_labels.tif", "r+b") as f:
        f.truncate((out / "s3_labels.tif").stat().st_size // 2)
    untouched = (out / "s0_labels.tif").stat().st_mtime_ns
    code, _, stderr = run(argv, capsys)
    assert code == 2 and "exists" in stderr and "--resume" in stderr  # no silent overwrite
    code, stdout, stderr = run([*argv, "--resume"], capsys)
    assert code == 0, stderr
    assert "done: 3 stacks, 1 skipped" in stdout
    assert (out / "s0_labels.tif").stat().st_mtime_ns == untouched
    again = labels_of(out)
    assert sorted(again) == sorted(first)
    for name in first:
        np.testing.assert_array_equal(again[name], first[name], err_msg=name)
    assert not list(out.glob(".*"))
    # all done: nothing to do
    code, stdout, _ = run([*argv, "--resume"], capsys)
    assert code == 0 and "nothing to do, 4 stacks already segmented" in stdout
    code, _, stderr = run([*argv, "--resume", "--overwrite"], capsys)
    assert code == 2 and "contradict" in stderr


def test_cli_on_an_existing_cluster_and_exit_code_of_a_failed_stack(
    client, random_tiny_checkpoint, tmp_path, capsys
):
    data = tmp_path / "data"
    make_stacks(data, n=2)
    out = tmp_path / "out"
    argv = ["segment", str(data / "*.tif"), "-p", data, "-o", out]
    argv += ["--checkpoint", random_tiny_checkpoint, *FAST]
    address = client.scheduler.address
    code, stdout, stderr = run([*argv, "--scheduler", address], capsys)
    assert code == 0, stderr
    assert sorted(labels_of(out)) == ["s0_labels.tif", "s1_labels.tif"]
    assert "done: 2 stacks" in stdout
    # both at once is a usage error
    code, _, stderr = run([*argv, "--workers", "2", "--scheduler", address], capsys)
    assert code == 2 and "not allowed with" in stderr
    code, _, stderr = run([*argv, "--workers", "0"], capsys)
    assert code == 2 and "--workers" in stderr


def test_a_stack_failing_at_run_time_gives_exit_code_4(random_tiny_checkpoint, tmp_path, capsys):
    """Serial, several stacks: one cannot be read midway; the other is written, the failure is
    listed, the exit code says so."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("s0", "s1"):  # 8-bit: no intensity window, so the checks read no frame
        frames = (moving_disc(4) // 16).astype(np.uint8)
        tifffile.imwrite(data / f"{name}.tif", frames, photometric="minisblack")
        (data / f"{name}.csv").write_text(CLICK)
    bad = data / "s1.tif"
    size = bad.stat().st_size
    with open(bad, "r+b") as f:  # the last frame's bytes are gone: found only when read
        f.truncate(size - 48 * 64 - 100)
    out = tmp_path / "out"
    argv = ["segment", str(data / "*.tif"), "-p", data, "-o", out]
    code, stdout, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 4, (stdout, stderr)
    assert "failed: 1 of 2 stacks" in stdout and "s1.tif" in stdout
    assert sorted(labels_of(out)) == ["s0_labels.tif"]
    assert not list(out.glob(".*"))
    # a 16-bit stack's checks sample frames for its intensity window, the last one included:
    # there the damage is found before anything runs
    tifffile.imwrite(bad, moving_disc(4), photometric="minisblack")
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size - 48 * 64 * 2 - 100)
    argv = ["segment", bad, "-p", data / "s1.csv", "-o", tmp_path / "again.tif"]
    code, _, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 2 and "cannot be read" in stderr and "complete" in stderr, stderr
    assert not (tmp_path / "again.tif").exists()


def test_local_cluster_from_the_command_line(random_tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data"
    make_stacks(data, n=2)
    out = tmp_path / "out"
    argv = ["segment", str(data / "*.tif"), "-p", data, "-o", out, "--workers", "2"]
    code, stdout, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, stderr
    assert sorted(labels_of(out)) == ["s0_labels.tif", "s1_labels.tif"]
    assert "done: 2 stacks" in stdout


def test_batch_dask_example(client, random_tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from test_examples import run_example

    make_stacks(tmp_path / "data", n=2)
    args = [tmp_path / "data", "-o", tmp_path / "out", "--scheduler", client.scheduler.address]
    args += ["--checkpoint", random_tiny_checkpoint, "--image-size", 128]
    run_example("batch_dask.py", args, monkeypatch)
    assert sorted(labels_of(tmp_path / "out")) == ["s0_labels.tif", "s1_labels.tif"]
    printed = capsys.readouterr().out
    assert "2 stacks on 2 workers" in printed and "s0.tif: 1 objects" in printed
    run_example("batch_dask.py", [*args, "--resume"], monkeypatch)
    assert "s1.tif: already done" in capsys.readouterr().out


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_a_cluster_run_leaves_no_partial_output(
    random_tiny_checkpoint, tmp_path, capsys, sig, code
):
    """Ctrl+C (or a scheduler's SIGTERM) while workers write: the command stops the cluster
    and removes what the tasks had begun; a later --resume redoes those stacks."""
    data = tmp_path / "data"
    make_stacks(data, n=3, frames=12)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "napari_sam2.cli", "segment", str(data / "*.tif"), "-p", data]
    argv += ["-o", out, "--workers", "2", "--checkpoint", random_tiny_checkpoint, *FAST]
    env = {**os.environ, weights.CACHE_ENV: str(tmp_path / "cache")}
    process = subprocess.Popen([str(a) for a in argv], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and list(out.glob(".*.partial"))):
        assert process.poll() is None and time.monotonic() < deadline, "no task started"
        time.sleep(0.02)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "no partial output was kept" in stderr
    assert not list(out.glob(".*")), list(out.iterdir())
    complete = sorted(p.name for p in out.iterdir())
    code, stdout, stderr = run([*argv[3:], "--resume"], capsys)
    assert code == 0, stderr
    if complete:
        assert f"done: {3 - len(complete)} stacks, {len(complete)} skipped" in stdout
    else:
        assert "done: 3 stacks" in stdout
    assert len(labels_of(out)) == 3


def test_frame_progress_arrives_from_the_workers(client, random_tiny_checkpoint, tmp_path):
    stacks = make_stacks(tmp_path / "data", n=2, frames=6)
    options = SegmentOptions(image_size=128)
    jobs = plan_jobs(stacks, tmp_path / "data", tmp_path / "out", fmt="tif", to_folder=True)
    checked, _, _ = prepare(jobs, options)
    (tmp_path / "out").mkdir()
    spec = ModelSpec("sam2.1_hiera_tiny", str(random_tiny_checkpoint), 128, "cpu")
    events = []
    bars = ClusterBars(checked, enabled=False)

    def on_frames(stack, done, total):
        events.append((stack, done, total))
        bars.frames_done(stack, done, total)

    done, failed = run_on_cluster(client, spec, checked, options, on_frames=on_frames)
    assert sorted(done) == sorted(stacks) and not failed
    assert {stack for stack, _, _ in events} == set(stacks)  # the first frame is always sent
    for stack in stacks:
        mine = [(d, t) for s, d, t in events if s == stack]
        total = bars.totals[stack]  # visits: every frame forward, frame 0 again backward
        assert total == len(tifffile.imread(stack)) + 1 and all(
            t == total and 1 <= d <= total for d, t in mine
        ), mine
        assert [d for d, _ in mine] == sorted(d for d, _ in mine)  # in order
    for stack in stacks:
        bars.finished(stack)
    assert sum(bars.seen.values()) == 6 + 7 + 2 and bars.finished_stacks == 2
    bars.close()


def test_workers_read_a_remote_stack_by_url(client, random_tiny_checkpoint, tmp_path):
    """A URL stack on the cluster: the workers open it over HTTP themselves; its frame
    progress and its result come back under the URL as given (never folded into a Path)."""
    from local_server import LocalServer
    from test_remote_stacks import serve, write_ome_zarr

    local = write_ome_zarr(tmp_path / "served" / "r.ome.zarr", moving_disc(5))
    (tmp_path / "r.csv").write_text(CLICK)
    options = SegmentOptions(image_size=128)
    spec = ModelSpec("sam2.1_hiera_tiny", str(random_tiny_checkpoint), 128, "cpu")
    with LocalServer() as server:
        url = serve(server, local)
        jobs = plan_jobs([url], tmp_path / "r.csv", tmp_path / "out", to_folder=True)
        checked, _, _ = prepare(jobs, options)
        (tmp_path / "out").mkdir()
        events = []
        done, failed = run_on_cluster(
            client, spec, checked, options, on_frames=lambda *e: events.append(e)
        )
    assert not failed and list(done) == [url]
    assert events and {stack for stack, _, _ in events} == {url}
    labels = tifffile.imread(tmp_path / "out" / "r_labels.tif")
    assert labels.shape == (5, 48, 64) and labels[0].max() == 1


# ------------------------------------------------------------------- objects split over tasks
def discs_with_labels(folder: Path, frames: int = 4) -> tuple[Path, Path]:
    """A stack of five drifting discs, close enough for their masks to overlap, and the
    label image of frame 0 (ids out of order of size: 300, 4, 9, 12, 70)."""
    folder.mkdir(parents=True, exist_ok=True)
    rr, cc = np.mgrid[:64, :80]
    data = np.full((frames, 64, 80), 300, np.uint16)
    labels = np.zeros((64, 80), np.uint16)
    centres = [(16, 16), (18, 34), (40, 20), (44, 44), (24, 62)]
    for i, ((r, c), obj) in enumerate(zip(centres, (300, 4, 9, 12, 70))):
        for t in range(frames):
            data[t][(rr - r - t) ** 2 + (cc - c) ** 2 < 9**2] = 2000 + 400 * i
        labels[(rr - r) ** 2 + (cc - c) ** 2 < 8**2] = obj
    tifffile.imwrite(folder / "many.tif", data, photometric="minisblack")
    tifffile.imwrite(folder / "many_seg.tif", labels)
    return folder / "many.tif", folder / "many_seg.tif"


def test_objects_split_over_tasks_merge_into_the_same_labels(
    client, random_tiny_checkpoint, tmp_path
):
    from distributed import get_task_stream

    stack, seg = discs_with_labels(tmp_path / "data")
    common = dict(prompts=seg, checkpoint=random_tiny_checkpoint, prompt_frame=0, **SIZE)
    one = ns.segment_many([stack], out_dir=tmp_path / "one", **common)
    with get_task_stream(client) as tasks:
        split = ns.segment_many(
            [stack], out_dir=tmp_path / "split", client=client, objects_per_task=2, **common
        )
    assert one.ok and split.ok, (one.failed, split.failed)
    keys = [str(t["key"]) for t in tasks.data]
    for part in ("-0.0-", "-0.1-", "-0.2-", "-0m-"):  # three groups of 2, 2, 1 and the merge
        assert any(part in key for key in keys), keys
    expected = tifffile.imread(tmp_path / "one" / "many_labels.tif")
    got = tifffile.imread(tmp_path / "split" / "many_labels.tif")
    assert set(np.unique(expected)) == {0, 4, 9, 12, 70, 300}
    np.testing.assert_array_equal(got, expected)
    assert split.done[stack].counts == one.done[stack].counts
    assert split.done[stack].obj_ids == one.done[stack].obj_ids == [4, 9, 12, 70, 300]
    assert not list((tmp_path / "split").glob(".*"))  # no pieces left
    with pytest.raises(InputError, match="client"):  # splitting needs a cluster
        ns.segment_many([stack], out_dir=tmp_path / "here", objects_per_task=2, **common)


def test_automatic_segmentation_split_over_tasks(client, random_tiny_checkpoint, tmp_path, capsys):
    from distributed import get_task_stream

    stack, _ = discs_with_labels(tmp_path / "data")
    # random weights predict low IoUs: open the filters so that masks survive
    argv = ["segment", stack, "--auto", 1, "--points-per-side", 8, "--pred-iou-thresh", 0]
    argv += ["--stability-score-thresh", 0, "--checkpoint", random_tiny_checkpoint, *FAST]
    code, stdout, stderr = run([*argv, "-o", tmp_path / "one.tif"], capsys)
    assert code == 0, stderr
    found = int(stdout.split(" objects")[0].split()[-1])
    assert found >= 2, stdout
    argv += ["--scheduler", client.scheduler.address, "--objects-per-task", 1]
    with get_task_stream(client) as tasks:
        code, stdout, stderr = run([*argv, "-o", tmp_path / "split.tif"], capsys)
    assert code == 0, stderr
    assert f"{found} objects" in stdout
    keys = [str(t["key"]) for t in tasks.data]
    for part in ("-0a-", "-0.0-", "-0.1-", "-0m-"):  # find the objects, one task each, merge
        assert any(part in key for key in keys), keys
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "split.tif"), tifffile.imread(tmp_path / "one.tif")
    )
    # only with a cluster
    code, _, stderr = run([*argv[:-4], "--objects-per-task", 2, "-o", tmp_path / "x.tif"], capsys)
    assert code == 2 and "--workers" in stderr
