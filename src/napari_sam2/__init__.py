"""napari-sam2: Segment Anything Model 2 for napari — images, stacks and time-lapses.

The public API (no Qt needed)::

    import napari_sam2 as ns
    model = ns.load_model("sam2.1_hiera_tiny")  # downloads the weights on first use
    p = ns.ImagePredictor(model)
    p.set_image(image)
    r = p.predict(points=[(row, col)], labels=[1])

    # many stacks, here or on a Dask cluster (client=Client(...)), resumable
    report = ns.segment_many(["a.tif", "b.tif"], prompts="prompts/", out_dir="out/")

    # fine-tune on your own labelled images or stacks: an official checkpoint + JSON sidecar
    report = ns.train(["a.tif"], labels=["a_labels.tif"], out="mine.pt", steps=300)
"""

from .batch import BatchReport, segment_many
from .engine.automatic import AutomaticMaskGenerator, MaskRecord, masks_to_labels
from .engine.frames import FrameSourceError
from .engine.image import ImagePredictor, Prediction, WindowMasks
from .engine.labels import LabelError, LabelSink, track_to_labels
from .engine.lineage import LineageOptions, Track
from .engine.preprocess import IntensityWindow
from .engine.prompts import PromptError
from .engine.tiles import TilesError
from .engine.video import FrameResult, VideoTracker
from .engine.window_tracking import WindowFrameResult, WindowTracker
from .io.stacks import Stack, open_stack
from .io.tracks import write_ctc, write_geff, write_tracks_csv
from .model import MODEL_NAMES, CheckpointError, DeviceError, PrecisionError, SAM2Model
from .train import TrainReport, train
from .weights import ChecksumError, DownloadError, WeightsError, load_model

__version__ = "0.1.0"

__all__ = [
    "AutomaticMaskGenerator",
    "MaskRecord",
    "masks_to_labels",
    "FrameResult",
    "FrameSourceError",
    "LabelError",
    "LabelSink",
    "VideoTracker",
    "WindowTracker",
    "WindowFrameResult",
    "track_to_labels",
    "MODEL_NAMES",
    "CheckpointError",
    "DeviceError",
    "ChecksumError",
    "DownloadError",
    "WeightsError",
    "ImagePredictor",
    "IntensityWindow",
    "Prediction",
    "PrecisionError",
    "PromptError",
    "TilesError",
    "WindowMasks",
    "SAM2Model",
    "load_model",
    "BatchReport",
    "segment_many",
    "LineageOptions",
    "Track",
    "write_ctc",
    "write_geff",
    "write_tracks_csv",
    "Stack",
    "open_stack",
    "TrainReport",
    "train",
]
