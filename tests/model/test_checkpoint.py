"""Loading official-format checkpoint files: the good one loads; every bad one is refused with
an error that names the file, the expected configuration and the offending keys."""

from __future__ import annotations

import pytest
import torch
from local_server import closed_port_url

import napari_sam2 as ns
from napari_sam2 import weights
from napari_sam2.model import CONFIGS, CheckpointError, SAM2Model
from napari_sam2.model.checkpoint import identify
from napari_sam2.model.checkpoint import load_model as load_model_from_file

NAME = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return SAM2Model(CONFIGS[NAME]).state_dict()


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_loads_strictly_with_identical_weights(state, tmp_path):
    path = _save(tmp_path / "good.pt", {"model": state})
    model = ns.load_model(NAME, checkpoint=path, device="cpu")
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown SAM 2 model 'sam2_tiny'.*sam2\.1_hiera_tiny"):
        ns.load_model("sam2_tiny", checkpoint="x.pt")


def test_missing_checkpoint_argument_says_where_to_get_it(tmp_path, monkeypatch):
    """Without a checkpoint the file is downloaded; offline, the error says which file to get
    from where and where to put it (here: the official URL's file name, from a closed port)."""
    url = closed_port_url("sam2.1_hiera_tiny.pt")
    monkeypatch.setitem(weights.REGISTRY, NAME, weights.Weights(NAME, url, 10, None))
    dest = tmp_path / "cache" / "sam2.1_hiera_tiny.pt"
    with pytest.raises(ns.DownloadError) as info:
        ns.load_model(NAME, cache_dir=tmp_path / "cache", progress=False)
    msg = str(info.value)
    assert url in msg and str(dest) in msg and "checkpoint=PATH" in msg
    assert list((tmp_path / "cache").iterdir()) == []


def test_model_level_loader_requires_a_path():
    with pytest.raises(TypeError, match="napari_sam2.load_model"):
        load_model_from_file(NAME, None)


def test_image_size_runs_the_same_weights_at_another_input(state, tmp_path):
    path = _save(tmp_path / "good.pt", {"model": state})
    model = ns.load_model(NAME, checkpoint=path, device="cpu", image_size=128)
    assert model.config.image_size == 128 and model.config.embedding_size == 8
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="multiple of 64"):
        ns.load_model(NAME, checkpoint=path, image_size=100)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ns.load_model(NAME, checkpoint=tmp_path / "nope.pt")


def test_truncated_file(state, tmp_path):
    good = _save(tmp_path / "good.pt", {"model": state})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt.*truncated, corrupt"):
        ns.load_model(NAME, checkpoint=cut)


def test_garbage_file(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("this is not a checkpoint\n" * 100)
    with pytest.raises(CheckpointError, match=r"notes\.pt"):
        ns.load_model(NAME, checkpoint=bad)


def test_bare_state_dict_is_refused_with_the_fix(state, tmp_path):
    path = _save(tmp_path / "bare.pt", state)
    with pytest.raises(CheckpointError, match=r"bare\.pt.*'model' entry.*torch\.save"):
        ns.load_model(NAME, checkpoint=path)


def test_other_sam2_model_is_named(tmp_path):
    torch.manual_seed(0)
    small = SAM2Model(CONFIGS["sam2_hiera_small"]).state_dict()
    path = _save(tmp_path / "small.pt", {"model": small})
    with pytest.raises(CheckpointError) as info:
        ns.load_model(NAME, checkpoint=path)
    msg = str(info.value)
    assert "small.pt" in msg and repr(NAME) in msg
    assert "sam2_hiera_small" in msg and "name='sam2_hiera_small'" in msg
    assert "missing keys" in msg and "obj_ptr_tpos_proj.weight" in msg  # sam2.1-only keys
    assert "unexpected keys" in msg and "image_encoder.trunk.blocks.10" in msg


def test_sam2_checkpoint_into_sam21_config_is_named(tmp_path):
    torch.manual_seed(0)
    path = _save(tmp_path / "v2.pt", {"model": SAM2Model(CONFIGS["sam2_hiera_tiny"]).state_dict()})
    with pytest.raises(CheckpointError, match=r"looks like sam2_hiera_tiny weights"):
        ns.load_model(NAME, checkpoint=path)


def test_sam1_checkpoint_is_recognised(tmp_path):
    sam1 = {
        "image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
        "image_encoder.blocks.0.attn.qkv.weight": torch.zeros(2304, 768),
        "prompt_encoder.point_embeddings.0.weight": torch.zeros(1, 256),
        "mask_decoder.iou_token.weight": torch.zeros(1, 256),
    }
    path = _save(tmp_path / "sam_vit_b.pt", {"model": sam1})
    assert identify(sam1) == "SAM 1 (segment-anything)"
    with pytest.raises(CheckpointError, match=r"sam_vit_b\.pt.*SAM 1 \(segment-anything\)"):
        ns.load_model(NAME, checkpoint=path)


def test_shape_mismatch_names_the_key_and_both_shapes(state, tmp_path):
    bad = dict(state)
    bad["sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = _save(tmp_path / "shape.pt", {"model": bad})
    with pytest.raises(
        CheckpointError,
        match=r"1 shape mismatches: sam_mask_decoder\.iou_token\.weight: "
        r"file \(1, 128\) vs model \(1, 256\)",
    ):
        ns.load_model(NAME, checkpoint=path)


def test_missing_and_extra_keys_are_listed(state, tmp_path):
    bad = dict(state)
    del bad["no_mem_embed"]
    bad["something_else"] = torch.zeros(3)
    path = _save(tmp_path / "keys.pt", {"model": bad})
    with pytest.raises(CheckpointError) as info:
        ns.load_model(NAME, checkpoint=path)
    assert "1 missing keys: no_mem_embed" in str(info.value)
    assert "1 unexpected keys: something_else" in str(info.value)


def test_default_device_is_picked(state, tmp_path):
    path = _save(tmp_path / "good.pt", {"model": state})
    model = ns.load_model(NAME, checkpoint=path)
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert model.device.type == expected
