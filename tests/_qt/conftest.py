"""Shared by the widget tests: a small real network (waiting for workers: qt_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model():
    """sam2.1_hiera_tiny at a 128-pixel input with random weights, objects judged present (so
    every click gives a visible mask)."""
    from official import random_tiny

    return random_tiny(128, seed=4, object_bias=5.0)
