"""A worker thread holding a lock, as a propagated slice or an embedding holds the session's,
for tests that the event loop (or a reader) does not wait for it."""

from __future__ import annotations

import threading
from contextlib import contextmanager


@contextmanager
def lock_held(lock, seconds: float = 5.0):
    """Inside the block ``lock`` is held by another thread, until the block ends (at most
    ``seconds``); the thread is joined on exit."""
    held, done = threading.Event(), threading.Event()

    def holder():
        with lock:
            held.set()
            done.wait(seconds)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    try:
        yield
    finally:
        done.set()
        thread.join()
