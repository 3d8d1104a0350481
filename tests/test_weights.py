"""Downloading checkpoints: the real download code against a real HTTP server on 127.0.0.1.

Small files prove the mechanics (cache, sizes, hashes, failures, Ctrl+C); one real random-weight
checkpoint proves ``load_model(name)`` end to end.
"""

from __future__ import annotations

import hashlib
import os

import pooch
import pytest
import torch
from local_server import LocalServer, closed_port_url
from tqdm import tqdm

import napari_sam2 as ns
from napari_sam2 import weights
from napari_sam2.weights import ChecksumError, DownloadError, Weights

NAME = "sam2.1_hiera_tiny"
PAYLOAD = os.urandom(300_000)  # several download chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with LocalServer() as s:
        s.files["w.pt"] = PAYLOAD
        yield s


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(weights.CACHE_ENV, raising=False)
    monkeypatch.delenv(weights.SKIP_HASH_ENV, raising=False)


def _point(monkeypatch, url, size=300_000, sha256=PAYLOAD_SHA, name=NAME):
    monkeypatch.setitem(weights.REGISTRY, name, Weights(name, url, size, sha256))


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_registry_lists_the_eight_official_checkpoints():
    assert sorted(weights.REGISTRY) == sorted(ns.MODEL_NAMES)
    tiny = weights.REGISTRY["sam2.1_hiera_tiny"]
    assert (
        tiny.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    )
    assert tiny.size == 156_008_466 and tiny.filename == "sam2.1_hiera_tiny.pt"
    assert tiny.sha256.startswith("7402e0d8")
    for name, entry in weights.REGISTRY.items():
        known = name.startswith("sam2.1")
        assert (entry.size is not None, entry.sha256 is not None) == (known, known)
        assert entry.filename == f"{name}.pt"


def test_good_download_is_cached_and_not_fetched_again(server, tmp_path, monkeypatch):
    _point(monkeypatch, server.url("w.pt"))
    path = weights.fetch(NAME, cache_dir=tmp_path, progress=False)
    assert path == tmp_path / "w.pt" and path.read_bytes() == PAYLOAD
    assert weights.fetch(NAME, cache_dir=tmp_path, progress=False) == path
    assert server.hits["w.pt"] == 1
    assert _files(tmp_path) == ["w.pt"]  # no temporary file left beside it
    assert weights.is_cached(NAME, tmp_path)


def test_progress_hook_receives_a_tqdm_like_bar(server, tmp_path, monkeypatch):
    bars = []

    class Recorder(tqdm):  # napari.utils.progress is a tqdm subclass too
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.kwargs = kwargs
            self.closed = False
            self.updates = 0
            bars.append(self)

        def update(self, n=1):
            self.updates += n
            return super().update(n)

        def close(self):
            self.closed = True
            super().close()

    _point(monkeypatch, server.url("w.pt"))
    weights.fetch(NAME, cache_dir=tmp_path, progress=Recorder)
    _point(monkeypatch, server.url("w.pt"), size=None, name="sam2_hiera_tiny")  # size unknown
    weights.fetch("sam2_hiera_tiny", cache_dir=tmp_path / "2", progress=Recorder)
    for bar in bars:  # the total comes from the registry, else from the server
        assert bar.total == len(PAYLOAD) and bar.updates >= len(PAYLOAD) and bar.closed
        assert bar.kwargs["unit"] == "B" and "w.pt" in bar.kwargs["desc"]
    assert len(bars) == 2


def test_napari_progress_is_a_progress_hook(server, tmp_path, monkeypatch):
    """What the widget passes: napari's progress class (a tqdm subclass), no viewer needed."""
    from napari.utils import progress

    _point(monkeypatch, server.url("w.pt"))
    assert weights.fetch(NAME, cache_dir=tmp_path, progress=progress).read_bytes() == PAYLOAD


def test_a_callback_hook_reports_bytes_and_cancel_stops_and_keeps_nothing(
    server, tmp_path, monkeypatch
):
    """What the widget passes: plain callbacks, called as chunks arrive; Cancel stops the
    transfer at the next chunk and nothing is left in the cache."""
    server.files["big.pt"] = big = os.urandom(3 * 2**20 + 5)  # four download chunks
    _point(monkeypatch, server.url("big.pt"), size=len(big), sha256=None)
    seen = []
    hook = weights.progress_callback(lambda done, total: seen.append((done, total)))
    assert weights.fetch(NAME, cache_dir=tmp_path, progress=hook).read_bytes() == big
    done = [d for d, _ in seen]
    assert len(seen) >= 4 and done == sorted(done) and {t for _, t in seen} == {len(big)}
    assert seen[-1] == (len(big), len(big)) and 0 < done[0] < len(big)

    def cancel_after_the_first_chunk():
        return len(seen) > 0

    seen.clear()
    hook = weights.progress_callback(
        lambda done, total: seen.append((done, total)), cancel_after_the_first_chunk
    )
    with pytest.raises(weights.DownloadCancelled, match="big.pt was cancelled; nothing was kept"):
        weights.fetch(NAME, cache_dir=tmp_path / "2", progress=hook)
    assert len(seen) == 1 and _files(tmp_path / "2") == []


def test_truncated_download_fails_and_leaves_nothing(server, tmp_path, monkeypatch):
    server.short["w.pt"] = 1000  # Content-Length says 300,000; the connection drops after 1,000
    _point(monkeypatch, server.url("w.pt"))
    with pytest.raises(DownloadError, match=r"(?i)incomplete.*nothing was kept in the cache"):
        weights.fetch(NAME, cache_dir=tmp_path, progress=False)
    assert _files(tmp_path) == []


def test_wrong_size_fails_and_leaves_nothing(server, tmp_path, monkeypatch):
    _point(monkeypatch, server.url("w.pt"), size=len(PAYLOAD) + 1)
    with pytest.raises(DownloadError, match=r"got 300,000 bytes, expected 300,001") as info:
        weights.fetch(NAME, cache_dir=tmp_path, progress=False)
    assert str(tmp_path / "w.pt") in str(info.value)  # where to put a good copy
    assert _files(tmp_path) == []


def test_wrong_hash_explains_the_mirrors_and_the_override(server, tmp_path, monkeypatch):
    _point(monkeypatch, server.url("w.pt"), sha256="0" * 64)
    with pytest.raises(ChecksumError) as info:
        weights.fetch(NAME, cache_dir=tmp_path, progress=False)
    msg = str(info.value)
    assert PAYLOAD_SHA in msg and "0" * 64 in msg
    assert "Meta does not publish checksums" in msg and "mirrors" in msg
    assert "NAPARI_SAM2_SKIP_HASH=1" in msg and "verify=False" in msg
    assert _files(tmp_path) == []
    # the two overrides it names
    assert weights.fetch(NAME, cache_dir=tmp_path, progress=False, verify=False).is_file()
    (tmp_path / "w.pt").unlink()
    monkeypatch.setenv(weights.SKIP_HASH_ENV, "1")
    assert weights.fetch(NAME, cache_dir=tmp_path, progress=False).is_file()


def test_cache_dir_from_environment_and_argument(server, tmp_path, monkeypatch):
    assert weights.get_cache_dir() == pooch.os_cache("napari-sam2")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "env"))
    assert weights.get_cache_dir() == tmp_path / "env"
    assert weights.get_cache_dir(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    _point(monkeypatch, server.url("w.pt"))
    assert weights.fetch(NAME, progress=False) == tmp_path / "env" / "w.pt"
    assert (tmp_path / "env" / "w.pt").read_bytes() == PAYLOAD


def test_connection_refused_says_what_to_download_and_where(tmp_path, monkeypatch):
    url = closed_port_url("sam2.1_hiera_tiny.pt")
    _point(monkeypatch, url)
    with pytest.raises(DownloadError) as info:
        weights.fetch(NAME, cache_dir=tmp_path / "cache", progress=False)
    msg = str(info.value)
    assert url in msg and str(tmp_path / "cache" / "sam2.1_hiera_tiny.pt") in msg
    assert "checkpoint=PATH" in msg and "--checkpoint PATH" in msg
    assert _files(tmp_path / "cache") == []


def test_http_error_is_a_download_error(server, tmp_path, monkeypatch):
    _point(monkeypatch, server.url("missing.pt"))
    with pytest.raises(DownloadError, match="404"):
        weights.fetch(NAME, cache_dir=tmp_path, progress=False)
    assert _files(tmp_path) == []


def test_ctrl_c_during_download_leaves_nothing(server, tmp_path, monkeypatch):
    class Interrupt(tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    _point(monkeypatch, server.url("w.pt"))
    with pytest.raises(KeyboardInterrupt):
        weights.fetch(NAME, cache_dir=tmp_path, progress=lambda **kw: Interrupt(disable=True, **kw))
    assert _files(tmp_path) == []


def test_cached_file_of_the_wrong_size_is_refused(tmp_path, monkeypatch):
    _point(monkeypatch, closed_port_url("w.pt"))
    (tmp_path / "w.pt").write_bytes(b"half")
    with pytest.raises(ChecksumError, match=r"w\.pt has 4 bytes.*Delete it"):
        weights.fetch(NAME, cache_dir=tmp_path, progress=False)


def test_unknown_name_fails_before_downloading(tmp_path):
    with pytest.raises(ValueError, match=r"unknown SAM 2 model 'sam3'.*sam2\.1_hiera_tiny"):
        ns.load_model("sam3", cache_dir=tmp_path)


def test_load_model_downloads_on_first_use(random_tiny_checkpoint, tmp_path, monkeypatch):
    """End to end: a real official-format checkpoint (156 MB) served over HTTP, fetched into the
    cache, checked, loaded; the second load reads the cache."""
    data = random_tiny_checkpoint.read_bytes()
    with LocalServer() as server:
        server.files["sam2.1_hiera_tiny.pt"] = random_tiny_checkpoint
        url = server.url("sam2.1_hiera_tiny.pt")
        _point(monkeypatch, url, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        model = ns.load_model(NAME, device="cpu", image_size=128, cache_dir=tmp_path)
        again = ns.load_model(NAME, device="cpu", image_size=128, cache_dir=tmp_path)
        assert server.hits["sam2.1_hiera_tiny.pt"] == 1
    assert _files(tmp_path) == ["sam2.1_hiera_tiny.pt"]
    expected = torch.load(random_tiny_checkpoint, weights_only=True)["model"]
    for m in (model, again):
        assert m.config.image_size == 128
        assert all(torch.equal(v, expected[k]) for k, v in m.state_dict().items())
