"""ImagePredictor: embed an image once, then answer many prompts in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..model import SAM2Model
from ..model.mask_decoder import select_masks
from ..model.sam2 import ImageEmbedding
from .preprocess import (
    DEFAULT_PERCENTILES,
    LARGE_IMAGE_PIXELS,
    IntensityWindow,
    prepare_image,
    prepare_large_image,
)
from .prompts import Prompt, PromptError, to_model_points

LOGIT_CLAMP = 32.0  # low-res logits are returned clamped, ready to be fed back as mask_input


@dataclass(frozen=True)
class Prediction:
    """Masks for one prompt.

    masks: (K, H, W) bool at the image's resolution; scores: (K,) predicted IoU;
    logits: (K, L, L) float32 low-resolution logits, clamped to ±32, with L = image_size / 4
    (256 at the official 1024 input, 64 at 256) — pass one of them back as ``mask_input`` to
    refine. K is 3 with ``multimask=True`` and 1 otherwise.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray

    @property
    def best(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.scores))


class ImagePredictor:
    """Segment one 2-D image from point, box and mask prompts (SAM 2's image predictor).

    ``set_image`` runs the image encoder once; every ``predict`` after it runs only the prompt
    encoder and the mask decoder. Coordinates are (row, col) pixels of the original image.

    Intensities: uint8 images follow the official path exactly; other dtypes are mapped to
    [0, 1] by robust percentiles (``percentiles``) or by an explicit ``window`` given to
    ``set_image``. Images with 2 or more than 4 channels use ``channel`` (default 0).
    """

    def __init__(
        self,
        model: SAM2Model,
        *,
        mask_threshold: float = 0.0,
        channel: int = 0,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ) -> None:
        self.model = model
        self.mask_threshold = mask_threshold
        self.channel = channel
        self.percentiles = percentiles
        self._embedding: ImageEmbedding | None = None
        self._shape: tuple[int, int] | None = None

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(H, W) of the current image."""
        return self._shape

    @torch.inference_mode()
    def set_image(self, image: np.ndarray, *, window: IntensityWindow | None = None) -> None:
        """Embed ``image``: (H, W) or (H, W, C), any numeric dtype; numpy or lazy (dask, zarr,
        a memmap). Images above :data:`~napari_sam2.engine.preprocess.LARGE_IMAGE_PIXELS`
        (4096²) are read in strips and reduced by block means before the resize, so memory
        stays bounded (:func:`~napari_sam2.engine.preprocess.prepare_large_image`); smaller
        ones follow the official path exactly."""
        if not (hasattr(image, "shape") and hasattr(image, "dtype") and len(image.shape) >= 2):
            image = np.asarray(image)
        prepare = prepare_image
        if math.prod(image.shape[:2]) > LARGE_IMAGE_PIXELS:
            prepare = prepare_large_image
        else:
            image = np.asarray(image)
        x = prepare(
            image,
            image_size=self.model.config.image_size,
            channel=self.channel,
            window=window,
            percentiles=self.percentiles,
        )
        self.set_embedding(self.model.encode_image(x.to(self.model.device)), image.shape[:2])

    def set_embedding(self, embedding: ImageEmbedding, shape: tuple[int, int]) -> None:
        """Use an embedding computed elsewhere (e.g. a cache) for an image of ``shape``."""
        self._embedding = embedding
        self._shape = (int(shape[0]), int(shape[1]))

    def reset(self) -> None:
        self._embedding = None
        self._shape = None

    @torch.inference_mode()
    def predict(
        self,
        points: Sequence | np.ndarray | None = None,
        labels: Sequence | np.ndarray | None = None,
        box: Sequence | np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = True,
    ) -> Prediction:
        """Masks for one object.

        points: (N, 2) (row, col) pixels; labels: (N,) 1 positive / 0 negative;
        box: (min_row, min_col, max_row, max_col); mask_input: (L, L) or (1, L, L) low-res
        logits from a previous :class:`Prediction` (L = image_size / 4). Any combination works.
        multimask: three hypotheses (best for one ambiguous click) or one mask.
        """
        if self._embedding is None:
            raise RuntimeError("no image set: call set_image(image) before predict()")
        prompt = Prompt.build(self._shape, points, labels, box)
        model = self.model
        size = model.sam_prompt_encoder.mask_input_size
        mask = None
        if mask_input is not None:
            try:
                mask = np.asarray(mask_input, dtype=np.float32)
            except (TypeError, ValueError):
                raise PromptError(
                    f"mask_input must be low-res logits (numbers) of shape ({size}, {size}) — "
                    f"one of Prediction.logits — got {type(mask_input).__name__}"
                ) from None
            if mask.shape not in ((size, size), (1, size, size)):
                raise PromptError(
                    f"mask_input must be low-res logits of shape ({size}, {size}) or "
                    f"(1, {size}, {size}) — one of Prediction.logits — got {mask.shape}"
                )
            if not np.isfinite(mask).all():
                raise PromptError(
                    "mask_input contains NaN or infinite values; pass one of Prediction.logits "
                    "(finite, clamped to ±32) or leave mask_input out"
                )
            mask = torch.from_numpy(mask.reshape(1, 1, size, size)).to(model.device)
        coords, lbl = to_model_points(prompt, self._shape, model.config.image_size, model.device)
        if coords is None and mask is None:
            raise PromptError("give at least one of points (with labels), box or mask_input")

        emb = self._embedding
        out = model.decode(model.without_memory(emb.features), emb.high_res, coords, lbl, mask)
        low_res, scores = select_masks(out, multimask)
        full = F.interpolate(low_res, self._shape, mode="bilinear", align_corners=False)
        return Prediction(
            masks=(full > self.mask_threshold)[0].cpu().numpy(),
            scores=scores[0].float().cpu().numpy(),
            logits=low_res.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)[0].float().cpu().numpy(),
        )
