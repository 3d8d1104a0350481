"""The geometry and arithmetic of automatic mask generation: point grids, crop tiles, mask
boxes, stability scores, hole and speck removal, and box non-maximum suppression — each matching
what ``sam2==1.1.0``'s automatic mask generator computes (see :mod:`.automatic`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
from scipy import ndimage

EDGE_TOLERANCE = 20.0  # a box side this close (pixels) to an inner crop edge counts as cut
# min_mask_region_area: the official predictor thresholds low-res logits at 0 (its own default
# mask threshold, not the generator's) and sets holes and specks to +-10 around it.
REGION_THRESHOLD, REGION_FILL = 0.0, 10.0


@dataclass(frozen=True)
class Crop:
    """One crop: its box as the official (x0, y0, x1, y1), exclusive ends, and its layer."""

    x0: int
    y0: int
    x1: int
    y1: int
    layer: int

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


# -------------------------------------------------------------------- grids and crops
def point_grid(n_per_side: int) -> np.ndarray:
    """(n², 2) float64 (x, y) in [0, 1]: cell centres of an n x n grid, x fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)  # (n, n) each, rows along y
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def layer_point_grids(points_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``int(points_per_side / downscale**i)`` per side."""
    return [point_grid(int(points_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(image_hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> list[Crop]:
    """The whole image, then for each layer i >= 1 a (2**i x 2**i) tiling with overlap.

    Tiles of layer i overlap by ``int(overlap_ratio * short_side * 2 / 2**i)`` pixels; tiles are
    listed column of tiles by column of tiles (x0 outer, y0 inner), as official.
    """
    im_h, im_w = image_hw
    crops = [Crop(0, 0, im_w, im_h, 0)]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(im_h, im_w) * (2 / n))
        crop_w = math.ceil((overlap * (n - 1) + im_w) / n)
        crop_h = math.ceil((overlap * (n - 1) + im_h) / n)
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(x0s, y0s):
            crops.append(Crop(x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h), layer))
    return crops


# -------------------------------------------------------------------- mask arithmetic
def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """(N, H, W) logits -> (N,) IoU of the masks at ``threshold + offset`` and
    ``threshold - offset`` (the first lies inside the second). NaN for a mask empty at both."""
    inner = (logits > threshold + offset).flatten(1).sum(1, dtype=torch.int32)
    outer = (logits > threshold - offset).flatten(1).sum(1, dtype=torch.int32)
    return inner / outer


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) int64 (x0, y0, x1, y1) with inclusive ends; zeros if empty."""
    n, h, w = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (N, H), (N, W)
    y0 = rows.int().argmax(dim=1)
    y1 = h - 1 - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = w - 1 - cols.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).long()
    return boxes * rows.any(dim=1, keepdim=True)


def fill_small_regions(low_res: torch.Tensor, max_area: int) -> torch.Tensor:
    """(N, 1, h, w) low-res logits with holes (background regions, 8-connected) of at most
    ``max_area`` pixels set to +10 and specks (foreground regions) of at most that area set to
    -10, around a logit threshold of 0 — the official predictor's hole filling."""
    logits = low_res.float()
    foreground = (logits > REGION_THRESHOLD)[:, 0].cpu().numpy()  # (N, h, w)
    holes = _small_components(~foreground, max_area)
    specks = _small_components(foreground, max_area)
    holes_t = torch.from_numpy(holes)[:, None].to(logits.device)
    specks_t = torch.from_numpy(specks)[:, None].to(logits.device)
    logits = torch.where(holes_t, REGION_THRESHOLD + REGION_FILL, logits)
    return torch.where(specks_t, REGION_THRESHOLD - REGION_FILL, logits)


def _small_components(binary: np.ndarray, max_area: int) -> np.ndarray:
    """(N, h, w) bool -> (N, h, w) bool: pixels of 8-connected components of at most
    ``max_area`` pixels, each of the N images on its own."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across images
    labels, _ = ndimage.label(binary, structure=structure)
    sizes = np.bincount(labels.ravel())
    return (labels > 0) & (sizes[labels] <= max_area)


def touches_inner_crop_edge(boxes: torch.Tensor, crop: Crop, image_hw) -> torch.Tensor:
    """(N, 4) inclusive crop-pixel boxes -> (N,) bool: a side within 20 pixels of a crop edge
    that is not also within 20 pixels of the image's edge (the object is probably cut)."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.bool, device=boxes.device)
    im_h, im_w = image_hw
    offset = torch.tensor([crop.x0, crop.y0] * 2, device=boxes.device)
    uncropped = (boxes + offset).float()
    crop_edges = torch.tensor(crop.xyxy, dtype=torch.float32, device=boxes.device)
    image_edges = torch.tensor([0, 0, im_w, im_h], dtype=torch.float32, device=boxes.device)
    near_crop = (uncropped - crop_edges).abs() <= EDGE_TOLERANCE
    near_image = (uncropped - image_edges).abs() <= EDGE_TOLERANCE
    return (near_crop & ~near_image).any(dim=1)


# -------------------------------------------------------------------- suppression
def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Greedy non-maximum suppression within each category; the result of
    ``torchvision.ops.batched_nms``.

    boxes: (N, 4) float (x0, y0, x1, y1), area ``(x1 - x0) * (y1 - y0)``; scores: (N,);
    categories: (N,) int. A box is dropped when its IoU with a kept, higher-scoring box of the
    same category is above ``iou_threshold``. Returns the kept indices (int64), by decreasing
    score; equal scores keep their input order.
    """
    n = len(boxes)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    boxes = boxes.float().cpu()
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    iou = _box_iou(boxes)  # (N, N) float32
    # The comparison in float64, as torchvision's kernel compares its float IoU to a double.
    overlaps = iou.double() > iou_threshold
    categories = categories.cpu()
    overlaps &= categories[:, None] == categories[None, :]
    overlaps = overlaps.numpy()
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return torch.tensor(keep, dtype=torch.int64)


def _box_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) float32 -> (N, N) float32 IoU, with the operations in torchvision's order."""
    x0, y0, x1, y1 = boxes.unbind(1)
    area = (x1 - x0) * (y1 - y0)
    w = (torch.minimum(x1[:, None], x1[None]) - torch.maximum(x0[:, None], x0[None])).clamp(min=0)
    h = (torch.minimum(y1[:, None], y1[None]) - torch.maximum(y0[:, None], y0[None])).clamp(min=0)
    inter = w * h
    return inter / (area[:, None] + area[None] - inter)
