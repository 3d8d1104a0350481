"""Shared fixtures: real SAM 2 networks with seeded random weights, made once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam2.model import CONFIGS, SAM2Model

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def official_tiny():
    """Meta's sam2.1_hiera_tiny (image predictor build) with seeded random weights."""
    from official import build_official

    return build_official("sam2.1_hiera_tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(official_tiny, tmp_path_factory):
    """The random-weight official model saved in the official checkpoint format."""
    from official import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    save_checkpoint(official_tiny, path)
    return path


@pytest.fixture(scope="session")
def small_model():
    """Our sam2.1_hiera_tiny at a 256-pixel input: the whole real network, fast on a CPU."""
    torch.manual_seed(0)
    model = SAM2Model(CONFIGS["sam2.1_hiera_tiny"].with_image_size(256))
    from official import randomize_

    return randomize_(model, seed=1).eval()


@pytest.fixture(scope="session")
def mini_model():
    """sam2.1_hiera_tiny at a 128-pixel input: every part of the network runs, ~20 ms a frame.
    The object-score head is pushed towards "present", so that tracked masks are real."""
    from official import random_tiny

    return random_tiny(128, seed=2, object_bias=1.0)


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """For command-line tests: a cache of its own (never the user's, hashes never skipped by
    accident) and the test's folder as the working directory."""
    from napari_sam2 import weights

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(weights.SKIP_HASH_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def gray16():
    """A non-square 16-bit grayscale image with a bright disc on a dim background."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:90, :140]
    disc = (rows - 40) ** 2 + (cols - 60) ** 2 < 20**2
    return (400 + 2500 * disc + rng.normal(0, 50, disc.shape)).clip(0).astype(np.uint16)


@pytest.fixture(scope="session")
def random_tiny_checkpoint(tmp_path_factory):
    """Our sam2.1_hiera_tiny with seeded random weights, saved in the official file format
    (``{"model": state_dict}``, 156 MB) without building the reference sam2: for tests of
    downloads, the command line and the examples."""
    from official import randomize_

    torch.manual_seed(0)
    model = randomize_(SAM2Model(CONFIGS["sam2.1_hiera_tiny"]), seed=2)
    path = tmp_path_factory.mktemp("random_ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path
