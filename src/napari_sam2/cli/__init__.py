"""The ``napari-sam2`` command line (``main``); ``python -m napari_sam2.cli`` runs it too.

- :mod:`.main`: the entry point, exit codes of errors, SIGTERM handling;
- :mod:`.parser`: the arguments;
- :mod:`.segment`: ``segment``; :mod:`.tools`: ``download``, ``view``, ``info``.
"""

from .main import main

__all__ = ["main"]
