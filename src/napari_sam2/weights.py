"""The official SAM 2 checkpoints: where they come from, where they are cached, how to fetch them.

``napari_sam2.load_model(name)`` downloads a checkpoint once, on first use, into the user cache
(``pooch.os_cache("napari-sam2")``, e.g. ``~/.cache/napari-sam2`` on Linux; the environment
variable ``NAPARI_SAM2_CACHE`` or a ``cache_dir`` argument chooses another folder), and loads it
from there afterwards. Downloads are checked for size and SHA-256 and only ever appear in the
cache complete: they are written to a hidden temporary file beside the destination and renamed
on success; any failure, Ctrl+C included, removes the temporary file.

No napari or Qt here: a progress bar is anything tqdm-like (a tqdm bar on the terminal by
default, ``napari.utils.progress``), or plain callbacks through :func:`progress_callback` (the
widget's progress bar and its Cancel button).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .model import checkpoint as _checkpoint
from .model.config import CONFIGS, DEFAULT_MODEL, MODEL_NAMES, SAM2Config

CACHE_ENV = "NAPARI_SAM2_CACHE"
SKIP_HASH_ENV = "NAPARI_SAM2_SKIP_HASH"

# SHA-256 of the sam2.1 files as reported by several independent mirrors. Meta publishes no
# checksums; a mismatch may also mean that Meta replaced a file (see ChecksumError's message).
_SAM21_SHA256 = {
    "sam2.1_hiera_tiny": "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
    "sam2.1_hiera_small": "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
    "sam2.1_hiera_base_plus": "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
    "sam2.1_hiera_large": "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
}

_CHUNK = 1 << 20  # bytes per read while downloading


@dataclass(frozen=True)
class Weights:
    """One downloadable checkpoint. ``size`` (bytes) and ``sha256`` are None where unknown."""

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        """The file's name in the cache: the last part of the URL (``sam2.1_hiera_tiny.pt``)."""
        return Path(urlparse(self.url).path).name


def _official(config: SAM2Config) -> Weights:
    return Weights(
        config.name, config.checkpoint_url, config.checkpoint_bytes, _SAM21_SHA256.get(config.name)
    )


# name -> Weights. A plain dict on purpose: tests (and users with a local mirror) may point an
# entry elsewhere, e.g. ``REGISTRY["sam2.1_hiera_tiny"] = Weights(name, "http://host/x.pt")``.
REGISTRY: dict[str, Weights] = {name: _official(cfg) for name, cfg in CONFIGS.items()}


class WeightsError(RuntimeError):
    """A checkpoint that could not be obtained: offline, incomplete, or not the expected file."""


class DownloadError(WeightsError):
    """The download failed (no connection, HTTP error, interrupted transfer)."""


class ChecksumError(WeightsError):
    """The downloaded or cached file has the wrong size or SHA-256."""


class DownloadCancelled(WeightsError):
    """The download was stopped on request (:func:`progress_callback`'s ``cancelled``)."""


# A progress bar: called as ``progress(total=..., desc=..., unit="B", unit_scale=True,
# unit_divisor=1024)``, it returns an object with tqdm's ``update``, ``close`` and a settable
# ``total``: ``tqdm.tqdm`` and ``napari.utils.progress`` both are.
ProgressFactory = Callable[..., object]


def progress_callback(
    report: Callable[[int, int], None], cancelled: Callable[[], bool] | None = None
) -> ProgressFactory:
    """A progress hook made of plain callbacks, for ``progress=`` of :func:`fetch` and
    :func:`load_model`: ``report(done, total)`` after each chunk (bytes; ``total`` 0 where
    neither the registry nor the server says), called on the downloading thread. When
    ``cancelled()`` turns true the download stops with :class:`DownloadCancelled` at the next
    chunk, and nothing is kept in the cache."""

    def make(*, total=0, desc="downloading", **_):
        return _CallbackBar(report, cancelled, int(total or 0), desc)

    return make


class _CallbackBar:
    """The tqdm-like bar of :func:`progress_callback`."""

    def __init__(self, report, cancelled, total: int, desc: str) -> None:
        self.report, self.cancelled = report, cancelled
        self.total, self.n, self.desc = total, 0, desc

    def update(self, n: int = 1) -> None:
        if self.cancelled is not None and self.cancelled():
            raise DownloadCancelled(f"{self.desc} was cancelled; nothing was kept in the cache")
        self.n += n
        total = self.total or 0
        self.report(min(self.n, total) if total else self.n, total)  # pooch counts whole chunks

    def reset(self, total=None) -> None:
        self.n = 0
        if total is not None:
            self.total = total

    def close(self) -> None:
        pass


def get_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where checkpoints are kept: ``path``, else ``$NAPARI_SAM2_CACHE``, else the user cache
    (``pooch.os_cache("napari-sam2")``)."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-sam2"))


def get_weights(name: str, registry: Mapping[str, Weights] | None = None) -> Weights:
    """The registry entry for ``name``; unknown names list the valid ones."""
    registry = REGISTRY if registry is None else registry
    try:
        return registry[name]
    except KeyError:
        raise ValueError(
            f"unknown SAM 2 model {name!r}; choose one of: {', '.join(MODEL_NAMES)}"
        ) from None


def cached_path(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    registry: Mapping[str, Weights] | None = None,
) -> Path:
    """Where the checkpoint ``name`` is (or would be) in the cache; nothing is checked."""
    return get_cache_dir(cache_dir) / get_weights(name, registry).filename


def is_cached(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    registry: Mapping[str, Weights] | None = None,
) -> bool:
    return cached_path(name, cache_dir, registry).is_file()


def _skip_hash_from_env() -> bool:
    return os.environ.get(SKIP_HASH_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def fetch(
    name: str = DEFAULT_MODEL,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | ProgressFactory = True,
    verify: bool | None = None,
    registry: Mapping[str, Weights] | None = None,
) -> Path:
    """The path of checkpoint ``name`` in the cache, downloading it first if it is not there.

    cache_dir: the cache folder (see :func:`get_cache_dir`).
    progress: ``True`` a tqdm bar on stderr, ``False`` none, or a tqdm-like class such as
        ``napari.utils.progress``.
    verify: check the SHA-256 of a download where one is known; ``None`` means yes unless the
        environment variable ``NAPARI_SAM2_SKIP_HASH=1`` is set. Sizes are always checked.
    registry: where names are looked up (default :data:`REGISTRY`).

    A file already in the cache is used as it is when its size is right (it is hashed only
    when downloaded). Raises :class:`DownloadError` or :class:`ChecksumError`, whose messages
    say what to download by hand and where to put it.
    """
    weights = get_weights(name, registry)
    dest = cached_path(name, cache_dir, registry)
    if verify is None:
        verify = not _skip_hash_from_env()
    if dest.is_file():
        size = dest.stat().st_size
        if weights.size is not None and size != weights.size:
            raise ChecksumError(
                f"the cached checkpoint {dest} has {size:,} bytes but {weights.name} has "
                f"{weights.size:,}: it is incomplete or another file. Delete it to download "
                f"it again, or replace it with a good copy of {weights.url}."
            )
        return dest
    _download(weights, dest, progress=progress, verify=verify)
    return dest


def _download(
    weights: Weights, dest: Path, *, progress: bool | ProgressFactory, verify: bool
) -> None:
    """Download to a temporary file beside ``dest``, check it, rename it to ``dest``."""
    import pooch

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
    except OSError as e:
        raise DownloadError(
            f"cannot write to the checkpoint cache {dest.parent} ({e}). Choose another folder "
            f"with the environment variable {CACHE_ENV} (or cache_dir= / --cache-dir)."
        ) from e
    tmp = Path(tmp_name)
    bar = _make_bar(progress, weights)
    try:
        downloader = pooch.HTTPDownloader(
            progressbar=False if bar is None else _PoochBar(bar), chunk_size=_CHUNK
        )
        try:
            downloader(weights.url, str(tmp), None)
        except Exception as e:
            if not _is_transfer_error(e):
                raise
            raise DownloadError(_offline_message(weights, dest, e)) from e
        _check_file(weights, tmp, dest, verify)
        os.replace(tmp, dest)
    finally:  # also on KeyboardInterrupt: never leave a partial file in the cache
        if bar is not None:
            bar.close()
        tmp.unlink(missing_ok=True)


def _make_bar(progress: bool | ProgressFactory, weights: Weights):
    if progress is False or progress is None:
        return None
    if progress is True:
        from tqdm.auto import tqdm

        progress = tqdm
    return progress(
        total=weights.size or 0,
        desc=f"downloading {weights.filename}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
    )


class _PoochBar:
    """pooch's progress-bar protocol (a settable ``total``, ``update``, ``reset``, ``close``)
    over a tqdm-like bar. Always true: pooch tests the bar's truth, and a tqdm bar whose total
    is still 0 (size unknown before the server answers) is false."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def __bool__(self) -> bool:
        return True

    @property
    def total(self):
        return self.bar.total

    @total.setter
    def total(self, value) -> None:
        if value:  # 0: the server did not say; keep what the registry said
            self.bar.total = value

    def update(self, n: int) -> None:
        self.bar.update(n)

    def reset(self) -> None:
        self.bar.reset(total=self.bar.total)

    def close(self) -> None:
        self.bar.close()


def _is_transfer_error(e: Exception) -> bool:
    """Errors of the network, the server or the disk (as opposed to bugs). requests' exceptions
    are OSErrors."""
    return isinstance(e, OSError)


def _check_file(weights: Weights, tmp: Path, dest: Path, verify: bool) -> None:
    size = tmp.stat().st_size
    if weights.size is not None and size != weights.size:
        raise DownloadError(
            f"the download of {weights.url} is incomplete or wrong: got {size:,} bytes, "
            f"expected {weights.size:,}. Nothing was kept in the cache. Try again; "
            + _manual_instructions(weights, dest)
        )
    if not verify or weights.sha256 is None:
        return
    import pooch

    digest = pooch.file_hash(str(tmp), alg="sha256")
    if digest != weights.sha256.lower():
        raise ChecksumError(
            f"the SHA-256 of the downloaded {weights.filename} is {digest}, expected "
            f"{weights.sha256}. Nothing was kept in the cache.\n"
            "Meta does not publish checksums: the expected value is the one reported by several "
            "independent mirrors of the file. A mismatch means a corrupted transfer, a proxy "
            "that altered the file, or that Meta replaced the file. If you trust the source, "
            f"download without the check: set the environment variable {SKIP_HASH_ENV}=1, or "
            "pass verify=False (Python) / --no-verify (napari-sam2 download), or pass the file "
            "itself with checkpoint=PATH (--checkpoint PATH)."
        )


def _manual_instructions(weights: Weights, dest: Path) -> str:
    return (
        f"Or download {weights.url} yourself (on a machine with internet access) and put it "
        f"at {dest} — or pass its path with checkpoint=PATH (command line: --checkpoint PATH)."
    )


def _offline_message(weights: Weights, dest: Path, error: Exception) -> str:
    reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    return (
        f"could not download the {weights.name} checkpoint from {weights.url} "
        f"({type(error).__name__}: {reason}); nothing was kept in the cache. Try again; if "
        "this machine is offline or cannot reach the server, download "
        f"{weights.url} elsewhere and copy it to {dest} (the folder is set by "
        f"{CACHE_ENV} / cache_dir), or pass the file's path with checkpoint=PATH "
        "(command line: --checkpoint PATH)."
    )


def load_model(
    name: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike | None = None,
    device=None,
    *,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | ProgressFactory = True,
    precision: str = "fp32",
    compile: bool = False,
):
    """Build the SAM 2 model ``name`` with its official weights, ready to use.

    name: one of ``MODEL_NAMES`` (default ``"sam2.1_hiera_tiny"``).
    checkpoint: path to an official ``.pt`` file. ``None``: the cached download, fetched on
        first use (see :func:`fetch`).
    device: ``None`` picks CUDA, then Apple MPS, then the CPU.
    image_size: the network's input side in pixels, a multiple of 64. ``None`` (default): the
        size a fine-tuned checkpoint's sidecar records (``napari-sam2 train``), else the
        official 1024. Smaller is faster and less accurate — the weights are the same.
    cache_dir, progress: where downloads go and how their progress is shown (see :func:`fetch`).
    precision: "fp32" (exact, the default), "bf16", "fp16" or "auto": faster, slightly less
        accurate, where the device computes it natively (see docs/troubleshooting.md#speed).
    compile: ``torch.compile`` the encoder and the memory attention (worth it on a GPU).
    """
    get_weights(name)  # an unknown name fails before anything is downloaded
    _checkpoint.resolve_precision(precision, _checkpoint.pick_device(device))
    if checkpoint is None:
        checkpoint = fetch(name, cache_dir=cache_dir, progress=progress)
    return _checkpoint.load_model(
        name, checkpoint, device, image_size=image_size, precision=precision, compile=compile
    )


__all__ = [
    "CACHE_ENV",
    "REGISTRY",
    "SKIP_HASH_ENV",
    "ChecksumError",
    "DownloadCancelled",
    "DownloadError",
    "Weights",
    "WeightsError",
    "cached_path",
    "fetch",
    "get_cache_dir",
    "get_weights",
    "is_cached",
    "load_model",
    "progress_callback",
]
