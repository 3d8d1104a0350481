"""Files in and out, for the command line and batch scripts: stacks read lazily, prompts from CSV,
label volumes written frame by frame.

- :func:`open_stack`: a TIFF / OME-TIFF, ``.npy``, zarr or OME-Zarr stack as frames the tracker
  reads one at a time (memory-mapped or chunked; nothing is loaded whole), with its axes and
  pixel sizes where the file has them (:mod:`napari_sam2.io.ome`); a bioformats2raw layout as
  its image ``0/``; an OME-Zarr image at an ``https://`` / ``s3://`` URL read-only through
  fsspec; CZI, ND2, LIF and other formats through bioio (:mod:`napari_sam2.io.formats`, the
  ``[formats]`` extra).
- :func:`read_prompts`: clicks and boxes from a CSV file (our columns, or napari's Points export),
  every row checked, errors naming the line.
- :func:`add_prompts`: give them to a :class:`~napari_sam2.VideoTracker`.
- :func:`read_label_prompt`: a label image (Cellpose, StarDist, a previous run) whose objects
  become mask prompts on one frame.
- :func:`check_output`: an output path that is safe to write (never the input, inside it or
  around it), checked before anything runs.
- :func:`label_output`: a (T, H, W) label TIFF (OME-TIFF pixel sizes), zarr or OME-Zarr labels
  group written in place, which appears under its final name only when complete.

See docs/cli.md for the file formats.
"""

from .errors import InputError, PromptsFileError
from .label_prompts import LABEL_PROMPT_SUFFIXES, read_label_prompt
from .outputs import (
    check_output,
    check_writable_folder,
    discard_partial,
    is_zarr_output,
    label_counts,
    label_dtype,
    label_output,
    local_path,
    make_output_folder,
    output_shape,
    output_state,
    pieces_folder,
)
from .prompts_csv import ObjectPrompt, add_prompts, check_prompts, read_prompts, write_prompts
from .stacks import (
    STACK_SUFFIXES,
    TIFF_SUFFIXES,
    Stack,
    is_url,
    open_stack,
    stack_location,
    stack_stem,
)

__all__ = [
    "LABEL_PROMPT_SUFFIXES",
    "STACK_SUFFIXES",
    "TIFF_SUFFIXES",
    "InputError",
    "ObjectPrompt",
    "PromptsFileError",
    "Stack",
    "add_prompts",
    "check_output",
    "check_prompts",
    "check_writable_folder",
    "discard_partial",
    "label_counts",
    "label_dtype",
    "is_zarr_output",
    "is_url",
    "label_output",
    "local_path",
    "make_output_folder",
    "open_stack",
    "output_shape",
    "output_state",
    "pieces_folder",
    "read_label_prompt",
    "read_prompts",
    "stack_location",
    "stack_stem",
    "write_prompts",
]
