"""Loading Meta's official checkpoint files (``{"model": state_dict}``), strictly.

Every key and every tensor shape must match the requested configuration; otherwise the error
names the file, the configuration and the first offending keys, and, where it can tell, which
model the file really holds. Nothing is ever loaded partially.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .config import CONFIGS, get_config
from .precision import resolve_precision
from .sam2 import SAM2Model

_SHOWN = 5  # offending keys listed per category


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the requested model."""


class DeviceError(ValueError):
    """A device name that is not a device, or a device this machine does not have."""


def available_devices() -> list[str]:
    """The devices this machine can run on, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` picks CUDA, then Apple MPS, then the CPU. A named device must exist here:
    otherwise :class:`DeviceError` says which devices do."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    here = ", ".join(available_devices())
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(
            f"{device!r} is not a device name; devices on this machine: {here} "
            "(or leave the device unset to pick the best one)"
        ) from None
    if chosen.type == "cpu":
        return chosen
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (chosen.index is not None and chosen.index >= count):
            raise DeviceError(
                f"device {device!r} is not available: "
                + ("this machine has no CUDA GPU" if count == 0 else f"it has {count} CUDA GPU(s)")
                + f" that torch can use; devices on this machine: {here}"
            )
        return chosen
    if chosen.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(
                f"device {device!r} is not available: Apple MPS needs a Mac with Apple silicon "
                f"and a torch built for it; devices on this machine: {here}"
            )
        return chosen
    raise DeviceError(
        f"device {device!r} is not supported (use cpu, cuda or mps); devices on this machine: "
        f"{here}"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``"model"`` state dict of an official checkpoint file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for unreadable files; all mean the same
        size = path.stat().st_size
        detail = str(e).strip().splitlines()
        why = f"{type(e).__name__}: {detail[0][:200]}" if detail else type(e).__name__
        what = "an empty file" if size == 0 else f"{size:,} bytes"
        raise CheckpointError(
            f"cannot read checkpoint {path} ({what}): the file is truncated, corrupt or not a "
            f"PyTorch checkpoint ({why}). Download it again (see `napari-sam2 download`) or "
            "pass the path of a good copy."
        ) from e
    fmt = "Save your weights as torch.save({'model': model.state_dict()}, path)."
    if not isinstance(payload, Mapping) or "model" not in payload:
        found = list(payload)[:8] if isinstance(payload, Mapping) else type(payload).__name__
        raise CheckpointError(
            f"checkpoint {path} is not in the official SAM 2 format: expected a dict with a "
            f"'model' entry holding the state dict, found {found}. {fmt}"
        )
    state = payload["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"checkpoint {path}: its 'model' entry is a {type(state).__name__}, not a state dict "
            f"(parameter name -> tensor). {fmt}"
        )
    not_names = [k for k in state if not isinstance(k, str)]
    if not_names:
        raise CheckpointError(
            f"checkpoint {path}: state dict keys must be parameter names (strings), found "
            f"{[repr(k) for k in not_names[:_SHOWN]]}. {fmt}"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: entries that are not tensors: {bad[:_SHOWN]}")
    not_finite = [
        k
        for k, v in state.items()
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())
    ]
    if not_finite:
        raise CheckpointError(
            f"checkpoint {path} holds NaN or infinite values in {len(not_finite)} tensor(s): "
            f"{', '.join(not_finite[:_SHOWN])}. The file is damaged or came from a diverged "
            "training run; download the official weights again or use another checkpoint."
        )
    return dict(state)


def identify(state: Mapping[str, torch.Tensor]) -> str | None:
    """Best guess of which known model a state dict holds: a configuration name,
    ``"SAM 1 (segment-anything)"``, or None."""
    if "image_encoder.patch_embed.proj.weight" in state or any(
        k.startswith("image_encoder.blocks.") for k in state
    ):
        return "SAM 1 (segment-anything)"
    w = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if w is None:
        return None
    depth = len({k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")})
    is_sam21 = "obj_ptr_tpos_proj.weight" in state
    for name, cfg in CONFIGS.items():
        if (cfg.trunk.embed_dim, cfg.trunk.depth, cfg.is_sam21) == (w.shape[0], depth, is_sam21):
            return name
    return None


def check_state_dict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` matches ``model`` key for key and shape
    for shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or wrong_shape):
        return
    name = model.config.name
    guess = identify(state)
    lines = [f"checkpoint {source} does not fit the {name!r} model"]
    if guess and guess != name:
        lines[0] += f": it looks like {guess} weights"
        if guess in CONFIGS:
            lines[0] += f" — load it with name={guess!r}"
    for label, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", wrong_shape),
    ):
        if keys:
            more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
            lines.append(f"  {len(keys)} {label}: {', '.join(keys[:_SHOWN])}{more}")
    raise CheckpointError("\n".join(lines))


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """Where a fine-tuned checkpoint's description lives: ``OUT.pt`` -> ``OUT.json``."""
    return Path(checkpoint).with_suffix(".json")


def read_sidecar(checkpoint: str | os.PathLike) -> dict:
    """The JSON sidecar that ``napari_sam2.train`` writes next to a checkpoint ({} if none).
    Raises :class:`CheckpointError` for a sidecar that is not a JSON object."""
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the checkpoint's sidecar {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"the checkpoint's sidecar {path} is not a JSON object")
    return data


def load_model(
    name: str,
    checkpoint: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    image_size: int | None = None,
    precision: str = "fp32",
    compile: bool = False,
) -> SAM2Model:
    """Build the SAM 2 model ``name`` and load an official checkpoint file into it.

    name: one of the eight configurations, e.g. ``"sam2.1_hiera_tiny"`` (see ``MODEL_NAMES``).
    checkpoint: path to an official ``.pt`` file (``{"model": state_dict}``). To download the
        official file on first use, call ``napari_sam2.load_model`` instead.
    device: ``None`` picks CUDA, then MPS, then CPU.
    image_size: input side in pixels, a multiple of 64; the same weights run at any size,
        smaller is faster and less accurate. ``None`` (default): the size a fine-tuned
        checkpoint was trained at, where its JSON sidecar (``OUT.json`` beside ``OUT.pt``)
        says so, else the official 1024.
    precision: "fp32" (exact, the default), "bf16", "fp16" or "auto" — see
        :mod:`napari_sam2.model.precision`; one the device cannot compute fast is refused.
    compile: ``torch.compile`` the image encoder and the memory attention (for GPUs).
    Returns the model in eval mode on ``device``.
    """
    config = get_config(name)
    target = pick_device(device)  # a bad device fails before a large file is read
    resolve_precision(precision, target)  # and so does a precision it cannot compute
    if checkpoint is None:
        raise TypeError(
            f"no checkpoint path given for {name!r}; napari_sam2.load_model({name!r}) "
            "downloads the official file on first use"
        )
    state = read_state_dict(checkpoint)
    if image_size is None:
        image_size = int(read_sidecar(checkpoint).get("image_size", config.image_size))
    if image_size != config.image_size:
        config = config.with_image_size(image_size)
    model = SAM2Model(config)
    check_state_dict(model, state, str(checkpoint))
    model.load_state_dict(state, strict=True)
    model = model.to(target).eval().set_precision(precision)
    return model.compile_parts() if compile else model
