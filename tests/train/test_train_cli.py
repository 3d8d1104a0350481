"""``napari-sam2 train`` end to end on a small stack: exit codes, an output that appears only
when training ends (atomically, with its sidecar), interruption leaving a resumable state, and a
resumed run that computes exactly what an uninterrupted one does. LoRA adapters are merged into
plain weights that Meta's ``build_sam2`` loads strictly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from official import config_file
from sam2.build_sam import build_sam2

import napari_sam2 as ns
from napari_sam2.cli import main
from napari_sam2.model import native_bf16_cpu
from napari_sam2.train import state_path

pytestmark = pytest.mark.usefixtures("cli_env")
FAST = ["--image-size", "128", "--device", "cpu", "--quiet"]


@pytest.fixture
def stack(tmp_path):
    """3 frames of two moving discs, labelled 1 and 2, as .npy files."""
    rr, cc = np.mgrid[:64, :64]
    frames, labels = [], []
    for t in range(3):
        a = (rr - 20 - 2 * t) ** 2 + (cc - 20) ** 2 < 10**2
        b = (rr - 44) ** 2 + (cc - 40 - 2 * t) ** 2 < 12**2
        frames.append((30 + 120 * a + 180 * b).astype(np.uint16) * 10)
        labels.append((a * 1 + b * 2).astype(np.uint8))
    np.save(tmp_path / "cells.npy", np.stack(frames))
    np.save(tmp_path / "cells_labels.npy", np.stack(labels))
    return tmp_path / "cells.npy", tmp_path / "cells_labels.npy"


def _api(stack, out, ckpt, **kw):
    return ns.train(
        [stack[0]],
        [stack[1]],
        out,
        checkpoint=ckpt,
        image_size=128,
        steps=4,
        clip_frames=3,
        train="memory",
        val_fraction=0.5,
        val_every=2,
        device="cpu",
        **kw,
    )


def test_cli_trains_a_stack_and_writes_an_official_checkpoint(
    tmp_path, capsys, stack, random_tiny_checkpoint
):
    argv = [
        "train",
        stack[0],
        "--labels",
        stack[1],
        "-o",
        "t.pt",
        "--checkpoint",
        random_tiny_checkpoint,
        "--steps",
        "3",
        "--clip-frames",
        "3",
        "--train",
        "memory",
        "--val-fraction",
        "0.5",
        *FAST,
    ]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    sidecar = json.loads((tmp_path / "t.json").read_text())
    assert sidecar["train"] == "memory" and sidecar["image_size"] == 128
    assert sidecar["validation"]["after"]["tracking_iou"] is not None  # a clip was tracked
    assert len(sidecar["validation"]["objects"]) == 1  # one of the two objects held out
    assert not state_path(tmp_path / "t.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".json")) == [
        "t.json",
        "t.pt",
    ]  # no temporary left behind
    # An existing output needs --overwrite (exit 2); with it, it is replaced.
    assert main([str(a) for a in argv]) == 2
    assert main([str(a) for a in [*argv, "--overwrite"]]) == 0


def test_interrupted_run_resumes_to_the_same_result(
    tmp_path, capsys, stack, random_tiny_checkpoint
):
    whole = _api(stack, tmp_path / "whole.pt", random_tiny_checkpoint)

    def stop_at_2(step, steps, loss, val):
        if step == 2:
            raise KeyboardInterrupt

    out = tmp_path / "part.pt"
    with pytest.raises(KeyboardInterrupt):
        _api(stack, out, random_tiny_checkpoint, progress=stop_at_2)
    assert not out.exists() and state_path(out).exists()  # no half-written output
    # Not silently restarted: the state must be resumed or overwritten.
    argv = [
        "train",
        stack[0],
        "--labels",
        stack[1],
        "-o",
        out,
        "--checkpoint",
        random_tiny_checkpoint,
        "--steps",
        "4",
        "--clip-frames",
        "3",
        "--train",
        "memory",
        "--val-fraction",
        "0.5",
        *FAST,
    ]
    assert main([str(a) for a in argv]) == 2
    assert "--resume to continue" in capsys.readouterr().err
    resumed = _api(stack, out, random_tiny_checkpoint, resume=True)
    assert resumed.resumed_from == 2
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6)
    a = torch.load(out, weights_only=True)["model"]
    b = torch.load(tmp_path / "whole.pt", weights_only=True)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert not state_path(out).exists()


def test_lora_is_merged_into_plain_weights_meta_loads(tmp_path, stack, random_tiny_checkpoint):
    out = tmp_path / "lora.pt"
    ns.train(
        [stack[0]],
        [stack[1]],
        out,
        checkpoint=random_tiny_checkpoint,
        image_size=128,
        steps=2,
        clip_frames=2,
        train="decoder",
        lora=4,
        lr=1e-2,
        val_fraction=0.0,
        device="cpu",
    )
    base = torch.load(random_tiny_checkpoint, weights_only=True)["model"]
    trained = torch.load(out, weights_only=True)["model"]
    assert set(trained) == set(base)
    qkv = "image_encoder.trunk.blocks.0.attn.qkv.weight"
    assert not torch.equal(trained[qkv], base[qkv])  # the adapter changed the encoder
    assert torch.equal(
        trained["image_encoder.trunk.blocks.0.norm1.weight"],
        base["image_encoder.trunk.blocks.0.norm1.weight"],
    )  # nothing else in it
    build_sam2(config_file("sam2.1_hiera_tiny"), ckpt_path=str(out), device="cpu")  # strict


def test_weights_in_memory_train_as_their_file_does(tmp_path, stack, random_tiny_checkpoint):
    """The widget trains the model it is using: a state dict in memory is a base checkpoint
    like its file, with the same result, and the sidecar says where the weights came from."""
    from_file = _api(stack, tmp_path / "file.pt", random_tiny_checkpoint)
    state = torch.load(random_tiny_checkpoint, weights_only=True)["model"]
    in_memory = _api(stack, tmp_path / "memory.pt", state)
    assert in_memory.losses == pytest.approx(from_file.losses, rel=1e-6)
    sidecar = json.loads((tmp_path / "memory.json").read_text())
    assert sidecar["base_checkpoint"] == "weights given in memory"
    ns.load_model("sam2.1_hiera_tiny", checkpoint=tmp_path / "memory.pt", device="cpu")


def _train_argv(stack, ckpt, out="t.pt", steps=2):
    return [
        "train",
        stack[0],
        "--labels",
        stack[1],
        "-o",
        out,
        "--checkpoint",
        ckpt,
        "--steps",
        str(steps),
        "--clip-frames",
        "2",
        "--val-fraction",
        "0",
        *FAST,
    ]


def _mib_needed(message: str) -> float:
    return float(message.split(" needs ")[1].split(" MiB")[0].replace(",", ""))


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_a_disk_too_small_for_the_result_is_said_before_any_training(
    tmp_path, capsys, monkeypatch, stack, random_tiny_checkpoint
):
    """Less room than the checkpoint and the resumable state need: exit 1 before the first
    step, naming the path, the space needed and what is free; nothing written."""
    import shutil

    steps = []
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 1 << 40, 10 << 20)
    )
    before = _files(tmp_path)
    code = main([str(a) for a in _train_argv(stack, random_tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "the disk is full: writing t.pt needs " in err
    assert _mib_needed(err) > 2 * 149  # the checkpoint (149 MiB) and the state (more) together
    assert f"its folder {tmp_path} has 10 MiB free" in err and "nothing was trained" in err
    assert "Traceback" not in err and _files(tmp_path) == before
    with pytest.raises(OSError, match="the disk is full"):
        _api(stack, tmp_path / "t.pt", random_tiny_checkpoint, progress=lambda *a: steps.append(a))
    assert steps == []  # not one step


def test_a_disk_that_fills_while_the_checkpoint_is_written_keeps_the_finished_run(
    tmp_path, capsys, monkeypatch, stack, random_tiny_checkpoint
):
    """The disk fills part-way through writing OUT (ENOSPC after 1 MiB of it): exit 1 naming
    OUT and the space it needs; no OUT, no sidecar, no partial file; the finished run is kept,
    and --resume writes OUT without training again."""
    import errno
    from pathlib import Path

    from napari_sam2.train import save

    real = save._write
    written = [0]

    def fills_up(f, data):
        if Path(f.name).name.startswith(".t.pt.tmp"):
            written[0] += len(data)
            if written[0] > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, data)

    monkeypatch.setattr(save, "_write", fills_up)
    before = _files(tmp_path)
    code = main([str(a) for a in _train_argv(stack, random_tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "the disk is full: writing t.pt needs " in err
    assert 149 <= _mib_needed(err) < 160  # the checkpoint and its sidecar
    assert "the finished run is kept in t.pt.train-state" in err
    assert "rerun with --resume to write t.pt without training again" in err
    assert written[0] > 1 << 20  # it failed part-way, not before writing
    assert _files(tmp_path) == sorted([*before, "t.pt.train-state"])  # nothing half-written
    monkeypatch.setattr(save, "_write", real)  # room again
    steps = []
    report = ns.train(
        [stack[0]],
        [stack[1]],
        tmp_path / "t.pt",
        checkpoint=random_tiny_checkpoint,
        image_size=128,
        steps=2,
        clip_frames=2,
        val_fraction=0.0,
        device="cpu",
        resume=True,
        progress=lambda *a: steps.append(a),
    )
    assert report.resumed_from == 2 and len(report.losses) == 2 and steps == []  # no training
    assert _files(tmp_path) == sorted([*before, "t.json", "t.pt"])
    ns.load_model("sam2.1_hiera_tiny", checkpoint=tmp_path / "t.pt", device="cpu")


def test_a_file_size_limit_at_save_leaves_no_partial_checkpoint(
    tmp_path, stack, random_tiny_checkpoint
):
    """A real write failure (a file-size limit of 64 MiB, below the 149 MiB checkpoint, in a
    child process): exit 1 saying so with the space needed, and no file half-written."""
    import os
    import resource
    import subprocess
    import sys

    from napari_sam2 import weights

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))

    argv = [str(a) for a in _train_argv(stack, random_tiny_checkpoint)]
    before = _files(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "napari_sam2.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
        env={**os.environ, weights.CACHE_ENV: str(tmp_path / "cache")},
    )
    assert proc.returncode == 1, proc.stderr
    assert "the file-size limit (ulimit -f) stops writing t.pt, which needs " in proc.stderr
    assert 149 <= _mib_needed(proc.stderr) < 160
    assert "no resumable state could be kept either" in proc.stderr  # the state is larger
    assert "Traceback" not in proc.stderr and _files(tmp_path) == before


def test_bf16_training_changes_the_fp32_weights_it_trains(tmp_path, stack, random_tiny_checkpoint):
    """In bf16 the layers being trained cast their fp32 weights on every step (frozen ones use
    a copy made once): gradients reach the fp32 parameters, and the checkpoint written is the
    fp32 one, trained parts changed (LoRA merged into the trunk), frozen ones not. Where the
    CPU has no native bf16, the refusal is what is asserted."""
    out = tmp_path / "bf16.pt"
    if not native_bf16_cpu():
        with pytest.raises(ns.PrecisionError, match="no native bf16"):
            _api(stack, out, random_tiny_checkpoint, precision="bf16")
        return
    _api(stack, out, random_tiny_checkpoint, precision="bf16", lora=2)
    before = torch.load(random_tiny_checkpoint, weights_only=True)["model"]
    after = torch.load(out, weights_only=True)["model"]
    assert list(after) == list(before)
    assert all(v.dtype == torch.float32 for v in after.values())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("memory_attention.") for k in changed)
    assert any(k.startswith("image_encoder.trunk.blocks.") for k in changed)  # LoRA merged
    assert not any(k.startswith("image_encoder.neck.") for k in changed)  # frozen
