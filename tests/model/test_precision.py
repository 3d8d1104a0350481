"""Reduced precision and compilation: chosen per device, refused where they would be slow, and
giving what fp32 gives (within the price documented). Real networks with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import napari_sam2 as ns
from napari_sam2.model import PrecisionError, native_bf16_cpu
from napari_sam2.model.precision import resolve_precision

CPU = torch.device("cpu")


def test_fp16_is_refused_on_every_cpu():
    with pytest.raises(PrecisionError, match=r"fp16 is not computed natively by CPUs.*bf16"):
        resolve_precision("fp16", CPU)


def test_bf16_on_the_cpu_only_where_it_is_native():
    if native_bf16_cpu():
        assert resolve_precision("bf16", CPU) == "bf16" == resolve_precision("auto", CPU)
    else:
        with pytest.raises(PrecisionError, match="no native bf16.*emulated"):
            resolve_precision("bf16", CPU)
        assert resolve_precision("auto", CPU) == "fp32"


def test_an_unknown_precision_is_named():
    with pytest.raises(PrecisionError, match=r"one of fp32, bf16, fp16, auto, got 'half'"):
        resolve_precision("half", CPU)


def test_a_bad_precision_fails_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(PrecisionError):
        ns.load_model("sam2.1_hiera_tiny", tmp_path / "never-read.pt", "cpu", precision="fp16")


PROMPTS = (
    dict(points=[(40, 60)], labels=[1]),
    dict(box=(20, 40, 60, 80)),
    dict(points=[(40, 60), (10, 10)], labels=[1, 0], multimask=False),
)


def predictions(model, image) -> list:
    p = ns.ImagePredictor(model)
    p.set_image(image)
    return [p.predict(**prompt) for prompt in PROMPTS]


def test_bf16_agrees_with_fp32_on_the_image_predictor(mini_model, gray16):
    """Thresholds from measurements (AVX512-BF16 CPU, this model and image): mask IoU of every
    hypothesis >= 0.975, max |dlogit| 1.2e-2 (the random weights' logits span about -0.8 to
    1.2), |dscore| 5e-4. Asserted with about 2x margin: IoU >= 0.95, |dlogit| <= 0.03,
    |dscore| <= 0.005. Where the CPU has no native bf16, the refusal is what is asserted."""
    exact = predictions(mini_model, gray16)
    if not native_bf16_cpu():
        with pytest.raises(PrecisionError, match="no native bf16"):
            mini_model.set_precision("bf16")
        assert mini_model.precision == "fp32"
        return
    try:
        fast = predictions(mini_model.set_precision("bf16"), gray16)
    finally:
        mini_model.set_precision("fp32")
    for a, b in zip(exact, fast):
        assert b.logits.dtype == np.float32 and b.scores.dtype == np.float32
        inter = ((a.logits > 0) & (b.logits > 0)).sum(axis=(-2, -1))
        union = ((a.logits > 0) | (b.logits > 0)).sum(axis=(-2, -1))
        assert union.min() > 0 and (inter / union).min() >= 0.95
        assert np.abs(a.logits - b.logits).max() <= 0.03
        assert np.abs(a.scores - b.scores).max() <= 0.005


class WeightCasts(TorchDispatchMode):
    """Counts the conversions of the given parameters (``to`` or ``_to_copy`` of their
    storage: inference mode dispatches the first, no_grad its decomposition)."""

    CASTS = (torch.ops.aten.to, torch.ops.aten._to_copy)

    def __init__(self, params) -> None:
        super().__init__()
        self.storages = {p.data_ptr() for p in params}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in self.CASTS and args[0].data_ptr() in self.storages:
            self.count += out.dtype != args[0].dtype
        return out


def every_step(model) -> None:
    """Each frame-level step of the model once, in this thread (the engine's predictors and
    trackers embed frames in threads of their own), without gradients as the engine runs."""
    s, e = model.config.image_size, model.config.embedding_size
    emb = model.encode_image(torch.randn(1, 3, s, s))
    points, labels = torch.tensor([[[30.0, 40.0]]]), torch.ones(1, 1, dtype=torch.int32)
    out = model.decode_tracked(
        model.without_memory(emb.features), emb.high_res, points, labels, None, True
    )
    projected = model.memory_frame_projection(emb.features)
    memory, pos = model.encode_memory(
        emb.features, model.upscale_masks(out[2]), out[4], False, projected
    )
    memory = torch.cat((memory.flatten(2).transpose(1, 2), out[3][:, None, :64]), dim=1)
    memory_pos = torch.cat((pos.flatten(2).transpose(1, 2), torch.zeros(1, 1, 64)), dim=1)
    tokens = model.memory_frame_tokens(emb.features, emb.pos)
    conditioned = model.condition_on_memory(
        emb.features, emb.pos, memory, memory_pos, 1, None, tokens
    )
    model.decode(conditioned, emb.high_res, None, None, torch.randn(1, 1, 4 * e, 4 * e))


def test_bf16_converts_the_weights_once_and_fp32_gives_the_exact_model_back(mini_model, gray16):
    """No weight is converted per call in bf16 (they were, by autocast, on every step); the
    state dict stays the fp32 checkpoint, names and values; fp32 afterwards is bit for bit the
    model before. Where the CPU has no native bf16, the refusal is what is asserted."""
    before = {k: v.clone() for k, v in mini_model.state_dict().items()}
    exact = predictions(mini_model, gray16)
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 56)).astype(np.uint8)

    def track():
        t = ns.VideoTracker(mini_model, frames, embeddings=False)
        t.add_prompt(0, 1, points=[(15, 20)], labels=[1])
        return np.stack([r.logits for r in t.propagate()])

    exact_track = track()
    if not native_bf16_cpu():
        with pytest.raises(PrecisionError, match="no native bf16"):
            mini_model.set_precision("bf16")
    else:
        try:
            mini_model.set_precision("bf16")
            with torch.inference_mode(), WeightCasts(mini_model.parameters()) as casts:
                every_step(mini_model)
            state = mini_model.state_dict()
            assert list(state) == list(before)
            assert all(
                v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in state.items()
            )
        finally:
            mini_model.set_precision("fp32")
        assert casts.count == 0
    for a, b in zip(exact, predictions(mini_model, gray16)):
        assert np.array_equal(a.logits, b.logits) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(track(), exact_track)


def test_a_layers_reduced_weights_follow_its_parameters():
    """The bf16 copy is remade when the fp32 parameters change (an optimiser step, a state
    dict loaded); with gradients on, they reach the fp32 parameters. One small layer: the
    mechanics do not need a native bf16 CPU."""
    from napari_sam2.model.precision import Linear

    torch.manual_seed(0)
    layer, x = Linear(8, 4), torch.randn(3, 8)

    def expected():
        w, b = layer.weight.detach().bfloat16(), layer.bias.detach().bfloat16()
        return F.linear(x.bfloat16(), w, b)

    layer.set_compute_dtype(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(layer(x), expected())
        layer.weight.add_(1.0)
        assert torch.equal(layer(x), expected())
        layer.load_state_dict({"weight": torch.ones(4, 8), "bias": torch.zeros(4)})
        assert torch.equal(layer(x), expected())
    layer(x).float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.abs().sum() > 0
    assert layer.weight.dtype == torch.float32
    layer.set_compute_dtype(None)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_compiled_parts_give_the_eager_result_and_keep_parameter_names():
    from official import random_tiny

    model = random_tiny(128, seed=2, object_bias=1.0)
    names = list(model.state_dict())
    frames = np.random.default_rng(0).integers(0, 255, (4, 40, 56)).astype(np.uint8)

    def track():
        t = ns.VideoTracker(model, frames, embeddings=False)
        t.add_prompt(0, 1, points=[(15, 20)], labels=[1])
        t.add_prompt(0, 2, points=[(30, 40)], labels=[1])
        return np.stack([r.logits for r in t.propagate()])

    eager = track()
    model.compile_parts()
    assert model.compiled and list(model.state_dict()) == names
    np.testing.assert_allclose(track(), eager, atol=1e-4)
