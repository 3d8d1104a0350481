"""The mask decoder does per click only what depends on the click: clicks on one image without
a mask input (segment everything) share the image's first-layer projections, and where the few
prompt tokens attend to the many image tokens the image is never projected (the projections
are folded into the tokens' side). Results: each click's own answer, as if decoded alone."""

import torch


def _decode(model, features, high_res, points):
    """Decode, counting the image-token rows that the decoder's attention projections see."""
    e = model.config.embedding_size
    rows = []
    hooks = [
        lin.register_forward_hook(lambda _m, inp, _o: rows.append(inp[0][..., 0].numel()))
        for name, lin in model.sam_mask_decoder.transformer.named_modules()
        if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj"))
    ]
    labels = torch.ones(points.shape[:2], dtype=torch.int32)
    try:
        out = model.decode(features, high_res, points, labels)
    finally:
        for hook in hooks:
            hook.remove()
    image_rows = sum(n for n in rows if n % (e * e) == 0)
    return out, image_rows


@torch.inference_mode()
def test_clicks_share_the_image_and_each_gets_its_own_answer(small_model):
    model = small_model
    torch.manual_seed(0)
    emb = model.encode_image(torch.randn(1, 3, 256, 256))
    features = model.without_memory(emb.features)
    points = torch.rand(8, 1, 2, dtype=torch.float64) * 256
    together, image_rows = _decode(model, features, emb.high_res, points)
    hw = model.config.embedding_size**2
    # Projected the plain way, each click takes the image through 10 projections (80 x HW
    # rows for 8 clicks). Shared, the first layer's keys, values and image-side queries run
    # once (3); folded, the token-to-image keys and values never (0); what remains per click
    # is the image-to-token attention's queries of the second layer and both output
    # projections (3 x 8): 27 x HW.
    assert image_rows == 27 * hw, image_rows / hw
    for i in range(8):
        out, _ = _decode(model, features, emb.high_res, points[i : i + 1])
        assert torch.allclose(together.masks[i : i + 1], out.masks, atol=1e-4, rtol=1e-5)
        assert torch.allclose(together.ious[i : i + 1], out.ious, atol=1e-6)
        assert torch.allclose(together.object_score[i : i + 1], out.object_score, atol=1e-5)
