"""Remote OME-Zarr stacks by URL in the command line and the batch (a real HTTP server on
127.0.0.1): read-only, the same labels as the same image on disk, outputs and embeddings local."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from local_server import LocalServer
from test_cli import FAST, PROMPTS, moving_disc, run

import napari_sam2 as ns
from napari_sam2 import weights


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))


def write_ome_zarr(folder: Path, data: np.ndarray) -> Path:
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(folder), mode="w")
    write_image(
        data,
        group,
        axes="tyx",
        scale={"t": 1.0, "y": 0.5, "x": 0.5},
        axes_units={"y": "micrometer", "x": "micrometer"},
        scale_factors=(),
    )
    return folder


def serve(server: LocalServer, folder: Path) -> str:
    """Every file of ``folder`` on ``server``; the folder's URL."""
    for f in folder.rglob("*"):
        if f.is_file():
            server.files[f"{folder.name}/{f.relative_to(folder).as_posix()}"] = f
    return server.url(folder.name)


@pytest.fixture
def remote(tmp_path):
    """(URL of an OME-Zarr time-lapse served over HTTP, the same image on disk, prompts)."""
    local = write_ome_zarr(tmp_path / "served" / "disc.ome.zarr", moving_disc())
    csv = tmp_path / "prompts.csv"
    csv.write_text(PROMPTS)
    with LocalServer() as server:
        yield serve(server, local), local, csv, server


def test_segment_and_embed_a_remote_ome_zarr_by_url(
    remote, random_tiny_checkpoint, tmp_path, capsys
):
    """``embed URL`` fills a local store, ``segment URL --embeddings`` reuses it, and the
    labels equal those of the same image read from disk; only the server's files are read."""
    url, local, csv, server = remote
    before = {p: p.read_bytes() for p in local.rglob("*") if p.is_file()}
    ckpt = ["--checkpoint", random_tiny_checkpoint, *FAST]
    code, stdout, stderr = run(["embed", url, "-o", tmp_path / "e.zarr", *ckpt], capsys)
    assert code == 0, stderr
    assert f"{url} -> {tmp_path / 'e.zarr'}: 4 of 4 frames encoded" in stdout
    remote_out = tmp_path / "remote.tif"
    argv = ["segment", url, "-p", csv, "-o", remote_out, "--embeddings", tmp_path / "e.zarr"]
    code, stdout, stderr = run([*argv, *ckpt], capsys)
    assert code == 0, stderr
    assert stdout.startswith(f"{url} -> {remote_out}: 2 objects, 4 frames (0-3) of 4")
    argv = ["segment", local, "-p", csv, "-o", tmp_path / "local.tif"]
    code, _, stderr = run([*argv, *ckpt], capsys)
    assert code == 0, stderr
    got, want = tifffile.imread(remote_out), tifffile.imread(tmp_path / "local.tif")
    assert got.shape == (4, 48, 64) and np.unique(got).tolist() == [0, 1, 2]
    np.testing.assert_array_equal(got, want)
    assert {p: p.read_bytes() for p in local.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "http:").exists()  # never taken for a local relative path
    assert any("/c/" in name for name in server.hits)  # its chunks were read over HTTP


def test_segment_many_takes_urls_beside_local_stacks(remote, random_tiny_checkpoint, tmp_path):
    """A batch of a URL and a local stack: each is read where it is, labels written locally
    under the stack's name (the URL's last part)."""
    url, _, csv, _ = remote
    tif = tmp_path / "other.tif"
    tifffile.imwrite(tif, moving_disc(3), photometric="minisblack")
    report = ns.segment_many(
        [url, tif],
        prompts=csv,
        out_dir=tmp_path / "out",
        checkpoint=random_tiny_checkpoint,
        image_size=128,
        device="cpu",
        progress=False,
    )
    assert report.ok, report.failed
    assert set(report.done) == {url, tif}  # the URL kept as given, never folded into a Path
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "disc_labels.tif",
        "other_labels.tif",
    ]
    assert tifffile.imread(tmp_path / "out" / "disc_labels.tif").shape == (4, 48, 64)


def test_train_reads_a_remote_stack_by_url(remote, random_tiny_checkpoint, tmp_path):
    """``ns.train`` on a URL stack (labels local): the checkpoint is written locally, and its
    sidecar names the stack by its URL."""
    import json

    url, _, _, _ = remote
    rr, cc = np.mgrid[:48, :64]
    labels = np.stack([((rr - 20) ** 2 + (cc - 15 - 8 * t) ** 2 < 64) for t in range(4)])
    np.save(tmp_path / "disc_labels.npy", labels.astype(np.uint8))
    report = ns.train(
        [url],
        [tmp_path / "disc_labels.npy"],
        tmp_path / "mine.pt",
        checkpoint=random_tiny_checkpoint,
        image_size=128,
        steps=2,
        clip_frames=2,
        val_fraction=0.0,
        device="cpu",
    )
    assert report.path == tmp_path / "mine.pt" and len(report.losses) == 2
    assert json.loads((tmp_path / "mine.json").read_text())["data"][0]["stack"] == url
