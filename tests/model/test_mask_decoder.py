"""The mask decoder shares what does not depend on the prompt: clicks on one image without a
mask input (segment everything) are decoded together with the image's projections done once."""

import torch
from torch.utils.flop_counter import FlopCounterMode


def _decode(model, features, high_res, points):
    labels = torch.ones(points.shape[:2], dtype=torch.int32)
    with FlopCounterMode(display=False) as flops:
        out = model.decode(features, high_res, points, labels)
    return out, flops.get_total_flops()


@torch.inference_mode()
def test_clicks_on_one_image_share_its_projections_and_give_each_clicks_own_answer(
    small_model,
):
    model = small_model
    torch.manual_seed(0)
    emb = model.encode_image(torch.randn(1, 3, 256, 256))
    features = model.without_memory(emb.features)
    points = torch.rand(8, 1, 2, dtype=torch.float64) * 256
    together, flops_8 = _decode(model, features, emb.high_res, points)
    alone = [_decode(model, features, emb.high_res, points[i : i + 1]) for i in range(8)]
    flops_1 = alone[0][1]
    # The first layer's key/value and query projections of the image run once for all 8.
    assert flops_8 < 0.85 * 8 * flops_1, (flops_8, flops_1)
    for i, (out, _) in enumerate(alone):
        assert torch.allclose(together.masks[i : i + 1], out.masks, atol=1e-4, rtol=1e-5)
        assert torch.allclose(together.ious[i : i + 1], out.ious, atol=1e-6)
        assert torch.allclose(together.object_score[i : i + 1], out.object_score, atol=1e-5)
