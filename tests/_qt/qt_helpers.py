"""Helpers of the widget tests."""

from __future__ import annotations

TIMEOUT = 60_000


def wait(qtbot, widget) -> None:
    """Until every background worker of the widget has finished and its signals arrived."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    qtbot.wait(50)
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
