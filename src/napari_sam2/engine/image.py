"""ImagePredictor: embed an image once, then answer many prompts in milliseconds."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..model import SAM2Model
from ..model.mask_decoder import select_masks
from ..model.sam2 import ImageEmbedding
from .embeddings import (
    EmbeddingStore,
    EmbeddingsWarning,
    embedding_layout,
    frame_fingerprint,
    image_signature,
    model_signature,
)
from .preprocess import (
    DEFAULT_PERCENTILES,
    LARGE_IMAGE_PIXELS,
    IntensityWindow,
    as_window,
    check_frame_layout,
    prepare_image,
    prepare_large_image,
    sample_window,
    select_channels,
)
from .prompts import Prompt, PromptError, to_model_points
from .tiles import (
    TileGrid,
    Window,
    check_tile_options,
    check_window,
    resolve_tiles,
    tile_geometry,
)
from .window_masks import WindowMasks

LOGIT_CLAMP = 32.0  # low-res logits are returned clamped, ready to be fed back as mask_input


@dataclass(frozen=True)
class Prediction:
    """Masks for one prompt.

    masks: (K, H, W) bool at the image's resolution — a numpy array, or on a tiled image a
    :class:`WindowMasks` (the masks inside ``tile``, False outside; ``np.asarray`` and indexing
    give the full image); scores: (K,) predicted IoU; logits: (K, L, L) float32 low-resolution
    logits of ``tile``, clamped to ±32, with L = image_size / 4 (256 at the official 1024
    input, 64 at 256) — pass one of them back as ``mask_input`` (with ``tile=r.tile`` on a
    tiled image) to refine. K is 3 with ``multimask=True`` and 1 otherwise.
    tile: (min_row, min_col, max_row, max_col), max exclusive: the part of the image that was
    embedded to answer (the whole image unless tiled). downscaled: True when that part was
    larger than the model's input, so the model saw it reduced (untiled big images, and on a
    tiled image a prompt that no window holds, e.g. a box larger than a window).
    """

    masks: np.ndarray | WindowMasks
    scores: np.ndarray
    logits: np.ndarray
    tile: Window | None = None
    downscaled: bool = False

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

    Tiles (docs/big-images.md): with ``tiles=True`` (or ``"auto"``, which tiles images whose
    longer side exceeds 1.5 times the model's input), an image larger than ``tile`` pixels
    (default: the model's input) is not resized whole: it is covered by windows of ``tile``
    pixels overlapping by ``halo`` (default a quarter of the tile), embedded at native
    resolution when a prompt first needs one and kept, the ``cache_windows`` most recent in
    RAM. Each prompt is answered on the window that holds its points and box farthest from a
    cut side; a prompt no window holds (a box larger than a window) on the downscaled whole
    image (``Prediction.downscaled``). ``set_image`` then reads no pixels but a sample for
    the intensity window, so a lazy image of any size stays lazy.

    Embeddings store: ``set_image(image, embeddings=path)`` keeps the image's embeddings in a
    zarr store (:mod:`.embeddings`), tied to that image, the intensity window and the model:
    each window embedded is written there (``windows/r0-c0-r1-c1``) and read back, checked,
    instead of being encoded again — by this predictor once it has left RAM, or by the next
    one on the same store (another session, another machine). An image embedded whole is its
    frame 0 (up to 4096² pixels).
    """

    def __init__(
        self,
        model: SAM2Model,
        *,
        mask_threshold: float = 0.0,
        channel: int = 0,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        tiles: bool | str = False,
        tile: int | None = None,
        halo: int | None = None,
        cache_windows: int = 8,
    ) -> None:
        check_tile_options(tiles, tile, halo)
        self.model = model
        self.mask_threshold = mask_threshold
        self.channel = channel
        self.percentiles = percentiles
        self.tiles = tiles
        self.tile, self.halo = tile_geometry(model.config.image_size, tile, halo)
        self.cache_windows = max(1, int(cache_windows))
        self._embedding: ImageEmbedding | None = None
        self._shape: tuple[int, int] | None = None
        self._image = None  # the (lazy) image, kept only when tiled
        self._intensity: IntensityWindow | None = None
        self._windows: OrderedDict[Window, ImageEmbedding] = OrderedDict()
        self.grid: TileGrid | None = None  # the windows of the current image, when tiled
        self.embeddings: EmbeddingStore | None = None  # the current image's store, if any
        self._warned_read_only = False

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None or self._image is not None

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(H, W) of the current image."""
        return self._shape

    @property
    def windows_embedded(self) -> list[Window]:
        """The windows whose embeddings are in RAM now, oldest first."""
        return list(self._windows)

    @torch.inference_mode()
    def set_image(
        self,
        image: np.ndarray,
        *,
        window: IntensityWindow | None = None,
        embeddings=None,
        embeddings_dtype: str | None = None,
    ) -> None:
        """Embed ``image``: (H, W) or (H, W, C), any numeric dtype; numpy or lazy (dask, zarr,
        a memmap). Images above :data:`~napari_sam2.engine.preprocess.LARGE_IMAGE_PIXELS`
        (4096²) are read in strips and reduced by block means before the resize, so memory
        stays bounded (:func:`~napari_sam2.engine.preprocess.prepare_large_image`); smaller
        ones follow the official path exactly. A tiled image is embedded window by window in
        :meth:`predict` instead; its intensity window (other dtypes than uint8) is computed
        once here, on a sample, so that every window shows intensities alike.

        ``embeddings``: a store path (made if missing) or an :class:`~.embeddings.EmbeddingStore`
        for this image's embeddings; :class:`~.embeddings.EmbeddingsError` (before anything
        changes) if it was made for another image, intensity window, channel or model, or is
        damaged. ``embeddings_dtype`` of a new store: "float16" (default) or "float32"
        (exact: the same results as computing again)."""
        if not (hasattr(image, "shape") and hasattr(image, "dtype") and len(image.shape) >= 2):
            image = np.asarray(image)
        if self.tiles is not False:
            check_frame_layout(tuple(image.shape), image.dtype, self.channel)
        shape = tuple(int(n) for n in image.shape[:2])
        if resolve_tiles(self.tiles, shape, self.model.config.image_size, self.tile):
            window = as_window(window)
            if window is None and np.dtype(image.dtype) not in (np.uint8, np.bool_):
                window = sample_window(image, self.channel, self.percentiles)
            store = self._open_store(image, window, embeddings, embeddings_dtype)
            self.reset()  # only now: a refused image keeps the previous one
            self._image, self._intensity, self._shape = image, window, shape
            self.grid = TileGrid(shape, self.tile, self.halo)
            self.embeddings = store
            return
        store, pixels = None, None
        if embeddings is not None and math.prod(shape) <= LARGE_IMAGE_PIXELS:
            image = np.asarray(image)
            window = as_window(window)
            if window is None and image.dtype not in (np.uint8, np.bool_):
                sample = select_channels(image, self.channel)  # what prepare_image computes
                window = IntensityWindow.from_percentiles(sample, self.percentiles)
            store = self._open_store(image, window, embeddings, embeddings_dtype)
            pixels = frame_fingerprint(image)
        emb = None if store is None else self._read(store, pixels)
        if emb is None:
            emb = self._encode(image, window)
            self._write(store, emb, pixels)
        self.set_embedding(emb, shape)
        self.embeddings = store

    def _open_store(self, image, window, embeddings, dtype) -> EmbeddingStore | None:
        """The image's embeddings store (1 frame), checked against the image and model."""
        if embeddings is None or isinstance(embeddings, EmbeddingStore):
            return embeddings
        signature = {
            **image_signature(image, self.channel, window),
            **model_signature(self.model),
        }
        layout = embedding_layout(self.model.config)
        return EmbeddingStore.open(embeddings, signature, 1, dtype or "float16", layout)

    def _read(self, store: EmbeddingStore | None, pixels: int) -> ImageEmbedding | None:
        if store is None or 0 not in store:
            return None
        return store.get(0, self.model.device, pixels)

    def _write(self, store: EmbeddingStore | None, emb: ImageEmbedding, pixels: int) -> None:
        if store is None:
            return
        if store.writable:
            store.put(0, emb, pixels)
        elif not self._warned_read_only:
            self._warned_read_only = True
            warnings.warn(
                f"embeddings store {store.path} cannot be written (read-only): the embeddings "
                "it lacks are computed and kept in RAM only",
                EmbeddingsWarning,
                stacklevel=4,
            )

    def _encode(self, image, window) -> ImageEmbedding:
        """The whole image's embedding (resized to the model's input)."""
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
        return self.model.encode_image(x.to(self.model.device))

    def _window_embedding(self, tile: Window) -> ImageEmbedding:
        """A window's embedding: from RAM if recent, else read, encoded and kept."""
        if tile in self._windows:
            self._windows.move_to_end(tile)
            return self._windows[tile]
        r0, c0, r1, c1 = tile
        if tile == (0, 0, *self._shape):  # the downscaled whole image: in RAM only
            emb = self._encode(self._image, self._intensity)
        else:
            crop = np.asarray(self._image[r0:r1, c0:c1])
            store = None if self.embeddings is None else self.embeddings.window(tile)
            pixels = None if store is None else frame_fingerprint(crop)
            emb = self._read(store, pixels)
            if emb is None:
                emb = self._encode(crop, self._intensity)
                self._write(store, emb, pixels)
        self._windows[tile] = emb
        while len(self._windows) > self.cache_windows:
            self._windows.popitem(last=False)
        return emb

    def set_embedding(self, embedding: ImageEmbedding, shape: tuple[int, int]) -> None:
        """Use an embedding computed elsewhere (e.g. a cache) for an image of ``shape``."""
        self.reset()
        self._embedding = embedding
        self._shape = (int(shape[0]), int(shape[1]))

    def reset(self) -> None:
        self._embedding = None
        self._shape = None
        self._image = None
        self._intensity = None
        self._windows.clear()
        self.grid = None
        self.embeddings = None

    @torch.inference_mode()
    def predict(
        self,
        points: Sequence | np.ndarray | None = None,
        labels: Sequence | np.ndarray | None = None,
        box: Sequence | np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = True,
        tile: Sequence[int] | None = None,
    ) -> Prediction:
        """Masks for one object.

        points: (N, 2) (row, col) pixels; labels: (N,) 1 positive / 0 negative;
        box: (min_row, min_col, max_row, max_col); mask_input: (L, L) or (1, L, L) low-res
        logits from a previous :class:`Prediction` (L = image_size / 4). Any combination works.
        multimask: three hypotheses (best for one ambiguous click) or one mask.
        tile: on a tiled image, answer on this window (e.g. a previous ``Prediction.tile``,
        needed with ``mask_input``) instead of the one that holds the prompt best.
        """
        if not self.is_image_set:
            raise RuntimeError("no image set: call set_image(image) before predict()")
        prompt = Prompt.build(self._shape, points, labels, box)
        mask = self._mask_input(mask_input)
        if prompt.num_points == 0 and prompt.box is None and mask is None:
            raise PromptError("give at least one of points (with labels), box or mask_input")
        if self._image is None:
            if tile is not None:
                raise PromptError(
                    "tile= is for tiled images: this image is embedded whole (build the "
                    "ImagePredictor with tiles=True or 'auto' for windows)"
                )
            emb, window = self._embedding, (0, 0, *self._shape)
        else:
            window = self._choose_window(prompt, mask is not None, tile)
            if window is None:
                window = (0, 0, *self._shape)
            emb = self._window_embedding(window)
        r0, c0, r1, c1 = window
        shape = (r1 - r0, c1 - c0)
        if (r0, c0) != (0, 0):
            shift = np.array([r0, c0], dtype=np.float64)
            box_shifted = None if prompt.box is None else prompt.box - np.tile(shift, 2)
            prompt = Prompt(prompt.points - shift, prompt.labels, box_shifted)
        model = self.model
        coords, lbl = to_model_points(prompt, shape, model.config.image_size, model.device)
        if coords is None and mask is None:
            raise PromptError("give at least one of points (with labels), box or mask_input")

        out = model.decode(model.without_memory(emb.features), emb.high_res, coords, lbl, mask)
        low_res, scores = select_masks(out, multimask)
        masks = _upsample(low_res[0], shape, self.mask_threshold)
        if shape != self._shape:
            masks = WindowMasks(masks, window, self._shape)
        return Prediction(
            masks=masks,
            scores=scores[0].float().cpu().numpy(),
            logits=low_res.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)[0].float().cpu().numpy(),
            tile=window,
            downscaled=max(shape) > model.config.image_size,
        )

    def _choose_window(self, prompt: Prompt, has_mask: bool, tile) -> Window | None:
        if tile is not None:
            return check_window(tile, self._shape)
        if has_mask:
            raise PromptError(
                "on a tiled image, mask_input belongs to the window it was predicted on: pass "
                "tile=previous.tile with it"
            )
        rows, cols = prompt.points[:, 0], prompt.points[:, 1]
        if prompt.box is not None:
            rows = np.concatenate((rows, prompt.box[[0, 2]]))
            cols = np.concatenate((cols, prompt.box[[1, 3]]))
        if len(rows) == 0:
            return None
        return self.grid.best_window(rows, cols)

    def _mask_input(self, mask_input) -> torch.Tensor | None:
        if mask_input is None:
            return None
        size = self.model.sam_prompt_encoder.mask_input_size
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
        return torch.from_numpy(mask.reshape(1, 1, size, size)).to(self.model.device)


_STRIP_ROWS = 512  # rows of full-size masks computed at a time on images above 4096²


def _upsample(low_res: torch.Tensor, shape: tuple[int, int], threshold: float) -> np.ndarray:
    """(K, L, L) logits -> (K, H, W) bool masks at ``shape``, bilinear as the official predictor.
    Above :data:`LARGE_IMAGE_PIXELS` the same interpolation is applied in strips of rows as two
    small matrix products, so that no (K, H, W) float array is ever held."""
    if math.prod(shape) <= LARGE_IMAGE_PIXELS:
        full = F.interpolate(low_res[None], shape, mode="bilinear", align_corners=False)[0]
        return (full > threshold).cpu().numpy()
    x = low_res.float().cpu()
    rows_w, cols_w = (
        _bilinear_weights(shape[0], x.shape[-2]),
        _bilinear_weights(shape[1], x.shape[-1]),
    )
    x_cols = x @ cols_w.T  # (K, L, W)
    out = np.empty((len(x), *shape), dtype=bool)
    for r in range(0, shape[0], _STRIP_ROWS):
        strip = rows_w[r : r + _STRIP_ROWS] @ x_cols  # (K, s, W)
        out[:, r : r + len(strip[0])] = (strip > threshold).numpy()
    return out


def _bilinear_weights(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) matrix of 1-D bilinear interpolation with ``align_corners=False``."""
    scale = in_size / out_size
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = (src - low).float()
    w = torch.zeros(out_size, in_size)
    idx = torch.arange(out_size)
    w[idx, low] += 1 - frac
    w[idx, high] += frac
    return w
