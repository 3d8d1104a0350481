"""napari-sam2: Segment Anything Model 2 for napari — images, stacks and time-lapses.

The public API (no Qt needed)::

    import napari_sam2 as ns
    model = ns.load_model("sam2.1_hiera_tiny")  # downloads the weights on first use
    p = ns.ImagePredictor(model)
    p.set_image(image)
    r = p.predict(points=[(row, col)], labels=[1])

    # many stacks, here or on a Dask cluster (client=Client(...)), resumable
    report = ns.segment_many(["a.tif", "b.tif"], prompts="prompts/", out_dir="out/")
"""

from .batch import BatchReport, segment_many
from .engine.automatic import AutomaticMaskGenerator, MaskRecord, masks_to_labels
from .engine.frames import FrameSourceError
from .engine.image import ImagePredictor, Prediction, WindowMasks
from .engine.labels import LabelError, LabelSink, track_to_labels
from .engine.preprocess import IntensityWindow
from .engine.prompts import PromptError
from .engine.tiles import TilesError
from .engine.video import FrameResult, VideoTracker
from .model import MODEL_NAMES, CheckpointError, DeviceError, PrecisionError, SAM2Model
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
]
