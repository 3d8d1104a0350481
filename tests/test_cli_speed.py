"""The command line's speed options: ``embed`` ahead of time and ``segment --embeddings``,
``--precision``, ``--compile``. The real network at 128 px with a random-weight checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam2.cli import main
from napari_sam2.model import SAM2Model, native_bf16_cpu

pytestmark = pytest.mark.usefixtures("cli_env")
FAST = ["--image-size", "128", "--device", "cpu", "--quiet"]


@pytest.fixture
def files(tmp_path):
    rr, cc = np.mgrid[:48, :64]
    for name, t in (("a", 4), ("b", 3)):
        stack = np.stack(
            [((rr - 20) ** 2 + (cc - 15 - 5 * i) ** 2 < 64) * 3000 + 500 for i in range(t)]
        )
        tifffile.imwrite(
            tmp_path / f"{name}.tif", stack.astype(np.uint16), photometric="minisblack"
        )
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,20,15\n")
    return tmp_path


@pytest.fixture
def encodings(monkeypatch):
    """Counts image-encoder runs (the real encoder runs)."""
    calls = []
    real = SAM2Model.encode_image

    def counting(self, images):
        calls.append(images.shape[0])
        return real(self, images)

    monkeypatch.setattr(SAM2Model, "encode_image", counting)
    return calls


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_then_segment_without_encoding_again(
    files, capsys, encodings, random_tiny_checkpoint
):
    ckpt = ["--checkpoint", random_tiny_checkpoint]
    code, out, err = run(["embed", "a.tif", "-o", "a.embeddings.zarr", *ckpt, *FAST], capsys)
    assert code == 0, err
    assert "a.tif -> a.embeddings.zarr: 4 of 4 frames encoded" in out and len(encodings) == 4
    assert zarr.open_group("a.embeddings.zarr", mode="r")["frames"][:, 0].all()  # each recorded
    code, out, err = run(["embed", "a.tif", "-o", "a.embeddings.zarr", *ckpt, *FAST], capsys)
    assert code == 0 and "0 of 4 frames encoded (4 there)" in out and len(encodings) == 4
    argv = ["segment", "a.tif", "-p", "p.csv", "-o", "a_labels.tif", "--embeddings"]
    code, out, err = run([*argv, "a.embeddings.zarr", *ckpt, *FAST], capsys)
    assert code == 0, err
    assert len(encodings) == 4  # every frame came from the store
    assert tifffile.imread(files / "a_labels.tif").shape == (4, 48, 64)


def test_embed_several_stacks_into_a_folder(files, capsys, random_tiny_checkpoint):
    argv = ["embed", "a.tif", "b.tif", "-o", "emb", "--checkpoint", random_tiny_checkpoint]
    code, out, err = run([*argv, *FAST, "--embeddings-dtype", "float32"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (files / "emb").iterdir()) == [
        "a.embeddings.zarr",
        "b.embeddings.zarr",
    ]
    assert zarr.open_group("emb/b.embeddings.zarr", mode="r")["features"].dtype == np.float32
    assert "done: 2 stacks" in out


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (["embed", "b.tif", "-o", "a.embeddings.zarr"], "made for something else"),
        (["segment", "b.tif", "-p", "p.csv", "-o", "o.tif", "--embeddings", "a.embeddings.zarr"],
         "made for something else"),
        (["embed", "a.tif", "-o", "a.embeddings.zarr", "--model", "sam2.1_hiera_small"],
         "model ('sam2.1_hiera_tiny' in the store, 'sam2.1_hiera_small' here)"),
        (["embed", "a.tif", "-o", "p.csv"], "is a file, not an embeddings store"),
        (["embed", "a.tif", "-o", "x.zarr", "--precision", "fp16"], "fp16 is not computed"),
    ],
    ids=["embed-other-stack", "segment-other-stack", "other-model", "a-file", "fp16-on-cpu"],
)  # fmt: skip
def test_a_wrong_store_or_precision_exits_2_before_the_model(files, capsys, command, match):
    from napari_sam2.engine.embeddings import EmbeddingStore, data_signature
    from napari_sam2.engine.frames import FrameSource

    source = FrameSource(tifffile.imread(files / "a.tif"), image_size=128)
    signature = {**data_signature(source), "model": "sam2.1_hiera_tiny", "image_size": 128}
    EmbeddingStore.open(files / "a.embeddings.zarr", signature, 4)
    code, _, err = run([*command, "--checkpoint", "missing.pt", *FAST], capsys)
    assert code == 2, err
    assert match in err


def test_precision_auto_and_bf16(files, capsys, random_tiny_checkpoint):
    argv = ["segment", "a.tif", "-p", "p.csv", "--checkpoint", random_tiny_checkpoint, *FAST]
    code, _, err = run([*argv, "-o", "auto.tif", "--precision", "auto"], capsys)
    assert code == 0, err
    code, _, err = run([*argv, "-o", "bf16.tif", "--precision", "bf16"], capsys)
    if native_bf16_cpu():
        assert code == 0, err
        assert tifffile.imread(files / "bf16.tif").shape == (4, 48, 64)
    else:
        assert code == 2 and "no native bf16" in err
