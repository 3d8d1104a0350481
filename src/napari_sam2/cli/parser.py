"""The command line's arguments (argparse): one sub-parser per command."""

from __future__ import annotations

import argparse

from .. import weights
from ..engine.automatic import option_defaults
from ..model.config import DEFAULT_MODEL, MODEL_NAMES
from ..model.precision import PRECISIONS
from . import tools, train
from .common import PROG
from .segment import embed, segment


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _image_size(text: str) -> int:
    value = _whole(text)
    if value <= 0 or value % 64:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 64, got {value}")
    return value


def _model_options() -> argparse.ArgumentParser:
    """What loads the model and how it computes: shared by segment and embed."""
    group = argparse.ArgumentParser(add_help=False)
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=MODEL_NAMES,
        metavar="MODEL",
        help=f"SAM 2 model (default {DEFAULT_MODEL}; one of {', '.join(MODEL_NAMES)})",
    )
    group.add_argument(
        "--checkpoint", metavar="PATH", help="official .pt file (default: download / cache)"
    )
    group.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best found)")
    group.add_argument(
        "--image-size",
        type=_image_size,
        default=1024,
        metavar="N",
        help="network input side, a multiple of 64 (default 1024, as trained): smaller is "
        "faster and less accurate",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (exact, default); bf16/fp16 are about 2x faster where the device computes "
        "them natively (bf16: CUDA, or a CPU with AVX512-BF16/AMX; fp16: CUDA, MPS) and "
        "refused elsewhere; auto picks the fastest the device has (docs/troubleshooting.md)",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image encoder and the memory attention (worth it on a GPU; "
        "on a CPU it costs compilation time and gains nothing)",
    )
    _add_cache_dir(group)
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return group


def _stack_options() -> argparse.ArgumentParser:
    """How a stack is read: shared by segment and embed."""
    group = argparse.ArgumentParser(add_help=False)
    group.add_argument(
        "--axis",
        type=int,
        help="for data with two axes before (Y, X), e.g. (T, Z, Y, X): the one to track (0/1)",
    )
    group.add_argument(
        "--index", type=int, help="with --axis: the position on the other axis (e.g. the z)"
    )
    group.add_argument(
        "--channel", type=int, default=0, help="channel of multichannel data (default 0)"
    )
    group.add_argument(
        "--embeddings-dtype",
        choices=("float16", "float32"),
        default=None,
        help="of a new embeddings store: float16 (half the disk, mask IoU >= 0.999) or float32 "
        "(exact). Default: float16 for a store kept with --embeddings or made by embed; "
        "float32 for segment's own temporary store (float16 if the disk cannot hold it)",
    )
    return group


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )
    model, stack = _model_options(), _stack_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment and track objects in image stacks with SAM 2 (napari-sam2).",
        epilog="Exit codes: 0 ok, 1 I/O or unexpected error, 2 bad usage or input, 3 weights "
        "unavailable, 130 interrupted (Ctrl+C), 143 terminated (SIGTERM). See docs/cli.md.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {tools.version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    seg = commands.add_parser(
        "segment",
        parents=[debug, model, stack],
        help="track prompted objects through stacks into label volumes",
        description="Track objects through each stack and write a label volume (one label "
        "value per object id) of the stack's (T, H, W) shape. The objects come from a CSV of "
        "clicks and boxes, from a label image (every id one object), or, with --auto, from "
        "segmenting everything on one frame.",
    )
    seg.add_argument(
        "stacks",
        nargs="+",
        metavar="STACK",
        help="TIFF / OME-TIFF, .npy or zarr stack; glob patterns are expanded (quote them)",
    )
    seg.add_argument(
        "--prompts",
        "-p",
        metavar="PROMPTS",
        help="CSV of clicks/boxes (docs/cli.md) or a label image (.tif, .tiff, .npy: every id "
        "> 0 becomes an object, on --prompt-frame), used for every stack; or a folder holding "
        "<stack name>.csv for each stack",
    )
    seg.add_argument(
        "--prompt-frame",
        type=int,
        default=0,
        metavar="N",
        help="the frame a label-image PROMPTS belongs to (default 0); a (T, H, W) label volume "
        "gives its frame N",
    )
    seg.add_argument(
        "--auto",
        type=int,
        metavar="FRAME",
        help="instead of --prompts: segment everything SAM 2 finds on FRAME, then track every "
        "object found",
    )
    auto = option_defaults()  # the generator's own defaults
    side = auto["points_per_side"]
    seg.add_argument(
        "--points-per-side",
        type=int,
        default=side,
        metavar="N",
        help=f"--auto: clicks per side of the grid (default {side}: {side**2:,} clicks)",
    )
    seg.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=auto["pred_iou_thresh"],
        metavar="X",
        help="--auto: keep masks whose predicted IoU is above X, in [0, 1] (default "
        f"{auto['pred_iou_thresh']:g})",
    )
    seg.add_argument(
        "--stability-score-thresh",
        type=float,
        default=auto["stability_score_thresh"],
        metavar="X",
        help="--auto: keep masks whose stability score is at least X, in [0, 1] (default "
        f"{auto['stability_score_thresh']:g})",
    )
    seg.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="OUT",
        help="label file (.tif, .zarr or .ome.zarr) for one stack; a folder for several "
        "(<stack name>_labels.tif in it)",
    )
    seg.add_argument(
        "--direction",
        default="both",
        choices=("forward", "backward", "both"),
        help="propagate from the prompted frames forward, backward or both (default)",
    )
    seg.add_argument("--start", type=int, help="first frame of the range to track")
    seg.add_argument("--stop", type=int, help="last frame of the range to track (inclusive)")
    seg.add_argument(
        "--format",
        choices=("tif", "zarr", "ome.zarr", "ctc"),
        default="tif",
        help="output format when OUT is a folder (default tif; ome.zarr: an OME-Zarr labels "
        "group with the image's pixel sizes); ctc: OUT is a Cell Tracking Challenge folder "
        "(maskTTT.tif + res_track.txt; <stack name>_ctc in OUT for several stacks)",
    )
    seg.add_argument(
        "--new-objects",
        type=_positive,
        metavar="N",
        help="segment everything on frames 0, N, 2N, ... and track what no object covers as "
        "new objects (options of --auto apply; docs/lineage.md)",
    )
    seg.add_argument(
        "--divisions",
        action="store_true",
        help="follow dividing cells: a mask that splits into two lasting parts becomes two "
        "daughter tracks (needs --direction forward; docs/lineage.md)",
    )
    seg.add_argument(
        "--tracks",
        metavar="FILE",
        help="also write the tracks of one stack: FILE.csv (measurements per track and frame) "
        "or FILE.geff (a GEFF graph; pip install 'napari-sam2[lineage]')",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.add_argument(
        "--resume",
        action="store_true",
        help="skip stacks whose complete output exists (outputs take their name only when "
        "complete); redo the others",
    )
    where = seg.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="run the stacks in parallel on N worker processes on this machine (Dask), which "
        "share its cores",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the stacks on an existing Dask cluster, e.g. tcp://head:8786 (weights, "
        "stacks and outputs on storage every worker sees)",
    )
    seg.add_argument(
        "--objects-per-task",
        type=_positive,
        metavar="N",
        help="with --workers/--scheduler: split a stack with more than N objects, all prompted "
        "on one frame (a label image, --auto), into tasks of N objects each, merged into the "
        "same labels",
    )
    seg.add_argument(
        "--spill-dir",
        metavar="DIR",
        help="where tracking memory of old frames (and temporary embeddings) are kept on disk",
    )
    seg.add_argument(
        "--embeddings",
        metavar="STORE",
        help="an embeddings store (from `napari-sam2 embed`, or made here) to use and fill: the "
        "stack's store, or a folder of <stack name>.embeddings.zarr for several stacks; with "
        "tiles it keeps each window's frames too, for the next run; default: a temporary one",
    )
    seg.add_argument(
        "--tiles",
        choices=("auto", "on", "off"),
        default="auto",
        help="follow each object in a native-resolution window around it instead of resizing "
        "the whole frame to the model's input: auto (default) for frames larger than 1.5 times "
        "the input on a side, unless --new-objects or --divisions is given (they need whole "
        "frames); on for any frame larger than the input; off never (docs/big-images.md)",
    )
    seg.set_defaults(run=segment)

    train.add_parser(commands, [debug, model], _positive)

    emb = commands.add_parser(
        "embed",
        parents=[debug, model, stack],
        help="compute the image embeddings of stacks ahead of segmenting",
        description="Compute SAM 2's image embedding of every frame into a zarr store, e.g. on a "
        "GPU node, so that segmenting (segment --embeddings, or the widget) later starts at "
        "once: the image encoder is most of the work. A store is tied to its stack, model and "
        "input size; an existing one is completed. It holds whole frames: the windows that "
        "segment tracks big frames in (--tiles) depend on the prompts, and segment --embeddings "
        "adds them to the store as it runs.",
    )
    emb.add_argument("stacks", nargs="+", metavar="STACK", help="as for segment")
    emb.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="STORE",
        help="the store (.zarr) for one stack; a folder for several (<stack "
        "name>.embeddings.zarr in it)",
    )
    emb.set_defaults(run=embed)

    down = commands.add_parser(
        "download",
        parents=[debug],
        help="download checkpoints into the cache",
        description="Download official checkpoints into the cache (for offline use later).",
    )
    down.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        default=[DEFAULT_MODEL],
        help=f"model names, or 'all' (default {DEFAULT_MODEL})",
    )
    down.add_argument(
        "--no-verify",
        action="store_true",
        help=f"skip the SHA-256 check (also: {weights.SKIP_HASH_ENV}=1)",
    )
    _add_cache_dir(down)
    down.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    down.set_defaults(run=tools.download)

    view = commands.add_parser(
        "view",
        parents=[debug],
        help="open napari with the SAM 2 widget and an image (default: a sample)",
        description="Open napari with the SAM 2 widget docked and an image loaded: a file "
        "napari can read, or one of the package's synthetic samples. Without --checkpoint the "
        "official weights are fetched first (downloaded on first use).",
    )
    view.add_argument("image", nargs="?", help="a file to open (default: the sample)")
    view.add_argument(
        "--sample",
        choices=["stack", "timelapse", "lineage"],
        default="stack",
        help="which synthetic sample to open when no file is given (lineage: dividing and "
        "entering cells with their ground-truth labels)",
    )
    view.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_NAMES)
    view.add_argument("--checkpoint", metavar="PATH", help="official .pt file (skips download)")
    view.add_argument(
        "--input-size",
        type=int,
        choices=(1024, 512, 256),
        default=1024,
        help="the widget's input size (512 or 256: 4-16x faster per slice on a CPU)",
    )
    view.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    view.add_argument("--precision", choices=PRECISIONS, default="fp32")
    _add_cache_dir(view)
    view.set_defaults(run=tools.view)

    info = commands.add_parser(
        "info", parents=[debug], help="models cached, cache folder, device, versions"
    )
    _add_cache_dir(info)
    info.set_defaults(run=tools.info)
    return parser


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help=f"checkpoint cache (default: ${weights.CACHE_ENV} or the user cache folder)",
    )
