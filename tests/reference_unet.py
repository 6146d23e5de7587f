"""An explicit, loop-by-loop UNet forward with BrushNet residuals, written from
docs/reference.md section 2 as the reference fork does it (no hooks). The tests check
that the hook-based injection in ``train.model.injection`` computes exactly this.
"""

from __future__ import annotations

import torch


def reference_brushnet_unet(unet, sample, timestep, encoder_hidden_states, down, mid, up, added_cond_kwargs=None):
    down, up = list(down), list(up)
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {})
    if aug is not None:
        emb = emb + aug

    h = unet.conv_in(sample)
    skips = [h]                      # skip 0 is stored before injection
    h = h + down.pop(0)
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for i, resnet in enumerate(block.resnets):
            h = resnet(h, emb)
            if attentions is not None:
                h = attentions[i](h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            h = h + down.pop(0)
            skips.append(h)
        if block.downsamplers is not None:
            h = block.downsamplers[0](h)
            h = h + down.pop(0)
            skips.append(h)

    if getattr(unet.mid_block, "has_cross_attention", False):
        h = unet.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
    else:
        h = unet.mid_block(h, emb)
    h = h + mid

    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for i, resnet in enumerate(block.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
            if attentions is not None:
                h = attentions[i](h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            h = h + up.pop(0)
        if block.upsamplers is not None:
            h = block.upsamplers[0](h)
            h = h + up.pop(0)

    assert not down and not up and not skips, "residual or skip count mismatch"
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def assert_matches_reference(unet, branch, inputs: dict, scales=(0.0, 0.5, 1.0), atol: float = 1e-5) -> None:
    """brushnet_unet_forward == the explicit loop fed with the branch's residuals, at each scale."""
    from train.model.injection import brushnet_unet_forward

    for scale in scales:
        out = branch(**inputs, conditioning_scale=scale)
        ref = reference_brushnet_unet(unet, inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                                      out.down_block_res_samples, out.mid_block_res_sample, out.up_block_res_samples,
                                      inputs.get("added_cond_kwargs"))
        got = brushnet_unet_forward(unet, branch, **inputs, conditioning_scale=scale)
        torch.testing.assert_close(got, ref, rtol=0, atol=atol, msg=f"conditioning_scale={scale}")
