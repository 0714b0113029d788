"""Checkpoints in other projects' layouts, written from a model's state dict in timm's keys
(independently of visionzoo's converters), for tests that load them."""

import torch

_CLIP_RENAMES = (
    ("patch_embed.proj.", "conv1."), ("norm_pre.", "ln_pre."), ("norm.", "ln_post."), ("blocks.", "transformer.resblocks."),
    (".norm1.", ".ln_1."), (".norm2.", ".ln_2."), (".attn.qkv.", ".attn.in_proj_"), (".attn.proj.", ".attn.out_proj."),
    (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."),
)


def openai_clip_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP's / OpenCLIP's file of a CLIP ViT in timm's keys (``head`` the projection, its
    bias zero): the image tower under ``visual.`` (class_embedding (D,), positional_embedding
    (N, D), proj (D, E)), with a few text-tower keys beside it, as the real files have."""
    sd = dict(state_dict)
    out = {
        "logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.randn(10, 8), "transformer.resblocks.0.ln_1.weight": torch.ones(8),
        "visual.class_embedding": sd.pop("cls_token").flatten(), "visual.positional_embedding": sd.pop("pos_embed")[0],
        "visual.proj": sd.pop("head.weight").t().contiguous(),
    }
    del sd["head.bias"]
    for k, v in sd.items():
        for a, b in _CLIP_RENAMES:
            if k.startswith(a) or (a.startswith(".") and a in k):
                k = k.replace(a, b, 1)
        out["visual." + k] = v
    return out
