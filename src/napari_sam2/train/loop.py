"""``train``: fine-tune SAM 2 on a user's own labelled images and stacks.

The whole loop reads top to bottom (nanoGPT's ``train.py`` is the model): check the inputs, build
the model, choose what is trained, then ``for step in range(...)``: draw a sample, simulate its
prompts, track, take the loss, step AdamW; validate every so often; save a resumable state now
and then. Ctrl+C or SIGTERM saves that state and re-raises; the output is written only at the end,
atomically, as an official checkpoint (``{"model": state_dict}``, Meta's keys, LoRA merged) with a
JSON sidecar describing it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io import InputError, local_path
from ..model.checkpoint import (
    check_state_dict,
    identify,
    pick_device,
    read_state_dict,
    sidecar_path,
)
from ..model.config import CONFIGS, DEFAULT_MODEL, get_config
from ..model.precision import resolve_precision
from ..model.sam2 import SAM2Model
from .data import (
    MAX_OBJECTS,
    check_sources,
    load_sample,
    make_samples,
    open_sources,
    pick_objects,
    split_objects,
)
from .evaluate import evaluate
from .forward import embedding_from_levels, encode_frames, track_clip
from .loss import clip_loss
from .optim import (
    GRAD_CLIP,
    TRAIN_MODES,
    encoder_trained,
    make_optimizer,
    merged_state_dict,
    prepare_trainable,
    set_lr,
)
from .prompts import PromptSettings, plan_clip
from .save import DiskFullError, check_room, payload_bytes, save_together

# Learning rates for a user's few annotated images (Meta's 5e-6 suits large data sets).
DEFAULT_LR = {"decoder": 1e-4, "memory": 5e-5, "all": 1e-5, "lora": 1e-4}
CACHE_BYTES = 2 * 2**30  # frozen-encoder features kept in memory, at most
SAVE_EVERY = 50  # steps between resumable states


@dataclass
class TrainReport:
    """What a training run did. ``val_before``/``val_after``: validation figures
    (``one_click_iou``, ``tracking_iou`` (stacks), ``objects``) before the first step and at the
    end; ``val_on_training_objects``: too few objects to hold any out."""

    path: Path
    steps: int
    losses: list[float]
    val_before: dict
    val_after: dict
    val_history: list[dict] = field(default_factory=list)
    val_on_training_objects: bool = False
    seconds: float = 0.0
    resumed_from: int | None = None


def state_path(out: Path) -> Path:
    """The resumable state of an unfinished run writing ``out``."""
    return out.with_name(out.name + ".train-state")


def train(
    stacks,
    labels,
    out: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike | Mapping | None = None,
    image_size: int = 1024,
    steps: int = 300,
    lr: float | None = None,
    clip_frames: int = 8,
    train: str = "decoder",
    lora: int | None = None,
    device=None,
    precision: str = "fp32",
    val_fraction: float = 0.2,
    val_every: int = 50,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    activation_checkpointing: bool = False,
    prompts: PromptSettings | None = None,
    axis: int | None = None,
    index: int | None = None,
    progress: Callable[[int, int, float, float | None], None] | None = None,
) -> TrainReport:
    """Fine-tune SAM 2 ``model`` (weights: ``checkpoint``, default the official download) on
    ``stacks`` and their ``labels`` (one file or array per stack, or a folder of
    ``<stack name>.tif/.npy/.zarr``); every label id is an object. Writes ``out`` (an official
    checkpoint) and its sidecar ``out`` with ``.json``; returns a :class:`TrainReport`.

    train: ``decoder`` (prompt encoder + mask decoder), ``memory`` (+ memory attention and
    encoder) or ``all``; ``lora``: a rank, LoRA adapters on the image encoder (with ``decoder``
    or ``memory``). lr: default :data:`DEFAULT_LR` for the mode. clip_frames: K consecutive frames
    per stack sample. precision: ``fp32``, ``bf16`` (only where the device has it natively;
    :mod:`napari_sam2.model.precision`) or ``auto``. resume: continue an interrupted run from
    its state file.
    ``progress(step, steps, loss, val_iou)`` is called after every step; an exception it
    raises stops the run (a front end's Cancel) with the resumable state kept. ``checkpoint``
    may also be a state dict in memory (the weights a front end is using).

    Every input is checked before the model is built, raising :class:`~napari_sam2.io.InputError`
    (data, labels, output, a base checkpoint of another configuration); an unreadable checkpoint
    raises :class:`~napari_sam2.model.CheckpointError`."""
    started = time.perf_counter()
    out = local_path(out, "output")  # stacks may be URLs, the checkpoint is a local file
    prompts = prompts or PromptSettings()
    # ---------------------------------------------------------------- checks, before any work
    config = get_config(model)
    if train not in TRAIN_MODES:
        raise InputError(f"--train must be one of {', '.join(TRAIN_MODES)}, not {train!r}")
    if lora is not None and (lora < 1 or train == "all"):
        raise InputError("--lora takes a rank >= 1 and trains with --train decoder or memory")
    if steps < 1 or clip_frames < 1 or image_size % 64 or image_size < 64:
        raise InputError("steps and clip frames must be >= 1, the image size a multiple of 64")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"the validation fraction must lie in [0, 1), got {val_fraction}")
    if out.suffix != ".pt":
        raise InputError(f"the output must be a .pt file, not {out}")
    if not out.parent.is_dir():
        raise InputError(f"the output folder {out.parent} does not exist")
    state_file = state_path(out)
    if resume and not state_file.is_file():
        raise InputError(f"nothing to resume: {state_file} does not exist")
    if not resume:
        if out.exists() and not overwrite:
            raise InputError(f"{out} exists: pass --overwrite to replace it")
        if state_file.exists() and not overwrite:
            raise InputError(
                f"an interrupted run left {state_file}: pass --resume to continue it or "
                "--overwrite to start again"
            )
    target = pick_device(device)
    precision = resolve_precision(precision, target)
    sources = open_sources(stacks, labels, axis=axis, index=index)
    check_sources(sources, image_size)
    train_objs, val_objs = split_objects(sources, val_fraction, seed)
    val_on_training = not (set(val_objs) - set(train_objs)) and bool(val_objs)
    samples = make_samples(sources, train_objs, clip_frames)
    if not samples:
        raise InputError("no training sample: every object was held out for validation")
    if checkpoint is None:
        from ..weights import fetch

        checkpoint = fetch(model)
    if isinstance(checkpoint, Mapping):
        state, checkpoint = dict(checkpoint), "weights given in memory"
    else:
        state = read_state_dict(checkpoint)
    guess = identify(state)
    if guess != config.name:
        hint = f": pass --model {guess}" if guess in CONFIGS else ""
        raise InputError(
            f"base checkpoint {checkpoint} holds {guess or 'an unknown model'}, not {model}{hint}"
        )

    # ---------------------------------------------------------------- model and what trains
    net = SAM2Model(config.with_image_size(image_size))
    check_state_dict(net, state, str(checkpoint))
    net.load_state_dict(state, strict=True)
    trained = prepare_trainable(net, train, lora)
    net = net.to(target).set_precision(precision)
    net.train()
    lr = lr if lr is not None else DEFAULT_LR["lora" if lora else train]
    optimizer = make_optimizer(net, lr)
    params = [p for p in net.parameters() if p.requires_grad]
    rng, gen = np.random.default_rng(seed), torch.Generator(device=target).manual_seed(seed)
    losses, val_history, start = [], [], 0
    run_config = dict(
        model=model,
        image_size=image_size,
        train=train,
        lora=lora,
        lr=lr,
        steps=steps,
        clip_frames=clip_frames,
        seed=seed,
        val_fraction=val_fraction,
    )
    if resume:
        saved = torch.load(state_file, map_location=target, weights_only=False)
        if saved["config"] != run_config:
            raise InputError(
                f"{state_file} was written by a run with other settings ({saved['config']}); "
                "resume with the same options or start again with --overwrite"
            )
        net.load_state_dict(saved["model"], strict=True)
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["numpy_rng"]
        gen.set_state(saved["torch_rng"].cpu() if target.type == "cpu" else saved["torch_rng"])
        losses, val_history, start = saved["losses"], saved["val_history"], saved["step"]
    # Room for what the run leaves at the end (the checkpoint, the state until it is written),
    # said now rather than after hours of training: the state is the weights and AdamW's two
    # moments of each trained parameter.
    out_bytes = payload_bytes(state)
    state_bytes = payload_bytes(net.state_dict()) + 2 * sum(p.nbytes for p in params)
    check_room([out], out_bytes + state_bytes, "; nothing was trained")

    frozen = not encoder_trained(net)
    cache: dict = {}
    cached_bytes = [0]

    def embed(s: int, frames: tuple[int, ...]):
        """Features of frames of source ``s``; a frozen encoder's are computed once (while
        they fit in :data:`CACHE_BYTES`)."""
        if not frozen:
            return encode_frames(net, load_frames(s, frames), True, activation_checkpointing)
        entries = []
        for t in frames:
            entry = cache.get((s, t))
            if entry is None:
                with torch.no_grad():
                    entry = net.image_encoder(load_frames(s, (t,)))
                size = sum(x.numel() * x.element_size() for x in entry[0])
                if cached_bytes[0] + size <= CACHE_BYTES:
                    cache[(s, t)] = entry
                    cached_bytes[0] += size
            entries.append(entry)
        levels = [torch.cat([e[0][i] for e in entries]) for i in range(3)]
        return embedding_from_levels(net, levels, entries[0][1])

    def load_frames(s: int, frames: tuple[int, ...]):
        from .data import Sample

        images, _ = load_sample(sources, Sample(s, frames, ()), image_size, ids=())
        return images.to(target)

    def validate() -> dict:
        result = evaluate(net, sources, val_objs, image_size, clip_frames, embed)
        val_history.append({"step": len(losses), **result})
        return result

    def save_state(step: int) -> None:
        save_together(
            {
                state_file: dict(
                    config=run_config,
                    step=step,
                    model=net.state_dict(),
                    optimizer=optimizer.state_dict(),
                    numpy_rng=rng.bit_generator.state,
                    torch_rng=gen.get_state(),
                    losses=losses,
                    val_history=val_history,
                )
            },
            f"; the last state saved before it is kept in {state_file} (--resume continues from it)"
            if state_file.exists()
            else "",
        )

    # ---------------------------------------------------------------- the loop
    val_before = val_history[0] if val_history else validate()
    latest = val_before["one_click_iou"]
    step = start
    try:
        for step in range(start, steps):
            set_lr(optimizer, lr, step, steps)
            sample = samples[int(rng.integers(len(samples)))]
            ids = pick_objects(sample, rng, MAX_OBJECTS)
            _, gt = load_sample(sources, sample, image_size, ids=ids)
            gt = gt.to(target)
            emb = embed(sample.source, sample.frames)
            plan = plan_clip(gt, prompts, rng, gen)
            frames = track_clip(net, emb, gt, plan, prompts, rng, gen, activation_checkpointing)
            loss = clip_loss([f.steps for f in frames], gt)["total"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            losses.append(loss.item())
            if (step + 1) % val_every == 0 and step + 1 < steps:
                latest = validate()["one_click_iou"]
            if (step + 1) % SAVE_EVERY == 0 and step + 1 < steps:
                save_state(step + 1)
            if progress is not None:
                progress(step + 1, steps, losses[-1], latest)
    except BaseException:  # Ctrl+C, SIGTERM, an error: keep what is done, resumably
        save_state(len(losses))
        raise
    val_after = validate()

    # ---------------------------------------------------------------- the official checkpoint
    weights = {k: v.cpu() for k, v in merged_state_dict(net).items()}
    check_state_dict(SAM2Model(config), weights, "the trained model")  # Meta's keys exactly
    sidecar = dict(
        format="napari-sam2 fine-tuned SAM 2 checkpoint",
        base_model=model,
        base_checkpoint=str(checkpoint),
        image_size=image_size,
        train=train,
        lora_rank=lora,
        lr=lr,
        steps=steps,
        clip_frames=clip_frames,
        precision=precision,
        seed=seed,
        prompts=asdict(prompts),
        trained_parameters=len(trained),
        data=[
            dict(
                stack=s.name,
                frames=s.num_frames,
                objects=sorted({i for ids in s.objects.values() for i in ids}),
            )
            for s in sources
        ],
        validation=dict(
            objects=sorted([list(o) for o in val_objs]),
            on_training_objects=val_on_training,
            before=val_before,
            after=val_after,
        ),
        final_loss=float(np.mean(losses[-10:])) if losses else None,
    )
    # The finished run, resumable until the checkpoint is written (a full disk at the end
    # costs a rerun with --resume that only writes, not the training); then both files, whole.
    try:
        save_state(steps)
        kept = (
            f"; the finished run is kept in {state_file}: rerun with --resume to write {out.name} "
            "without training again"
        )
    except DiskFullError:  # the checkpoint, smaller, may still fit
        kept = (
            f"; the last state saved is kept in {state_file} (--resume continues from it)"
            if state_file.exists()
            else "; no resumable state could be kept either"
        )
    save_together({out: {"model": weights}, sidecar_path(out): json.dumps(sidecar, indent=2)}, kept)
    state_file.unlink(missing_ok=True)
    return TrainReport(
        out,
        steps,
        losses,
        val_before,
        val_after,
        val_history,
        val_on_training,
        time.perf_counter() - started,
        start or None,
    )
