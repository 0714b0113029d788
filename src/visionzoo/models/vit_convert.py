"""ViT's checkpoint key converters, registered for the "vit" family on import: timm's layout
(equal to visionzoo's), torchvision's, and "official": the ViT authors' JAX release (the R50
hybrid's ResNet included), the DINOv2 authors' and OpenAI CLIP's / OpenCLIP's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checkpoints import identity, register_converter, rename_keys

register_converter("vit", "timm")(identity)


#: the block keys that torchvision's and CLIP's layouts share: both build their blocks around
#: nn.MultiheadAttention (in_proj, out_proj) with norms ln_1 / ln_2
_MHA_BLOCK_RENAMES = [
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.(?:self_attention|attn)\.in_proj_", ".attn.qkv."),
    (r"\.(?:self_attention|attn)\.out_proj\.", ".attn.proj."),
]


@register_converter("vit", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """torchvision's ``vit_b_16`` ... layout (``encoder.layers.encoder_layer_N``)."""
    if "conv_proj.weight" not in sd:
        raise KeyError("conv_proj.weight")
    sd = rename_keys(sd, [
        (r"^conv_proj\.", "patch_embed.proj."),
        (r"^class_token$", "cls_token"),
        (r"^encoder\.pos_embedding$", "pos_embed"),
        (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
        *_MHA_BLOCK_RENAMES,
        (r"\.mlp\.(0|linear_1)\.", ".mlp.fc1."),
        (r"\.mlp\.(3|linear_2)\.", ".mlp.fc2."),
        (r"^encoder\.ln\.", "norm."),
        (r"^heads\.head\.", "head."),
    ])
    return sd


def _jax_conv(w: Tensor) -> Tensor:
    return w.permute(3, 2, 0, 1) if w.ndim == 4 else w  # HWIO -> OIHW


def _from_dinov2(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The DINOv2 authors' backbones (facebookresearch/dinov2 ``*_pretrain.pth``): timm's keys,
    plus the masked-modelling ``mask_token`` that inference never reads (dropped), and ViT-g's
    SwiGLU layers named ``w12`` / ``w3`` (timm's ``fc1`` / ``fc2``). With
    registers (``register_tokens``) their position embedding has a class row, which the class
    token takes in: the tokens are the same after the stem, in the patch-only layout of
    ``no_embed_class`` that timm and visionzoo build for them."""
    sd = {k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v for k, v in sd.items()}  # ViT-g's SwiGLU
    sd.pop("mask_token")
    if "register_tokens" in sd:
        sd["reg_token"] = sd.pop("register_tokens")
        sd["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, :1]  # 1, 1, D
        sd["pos_embed"] = sd["pos_embed"][:, 1:]  # 1, Gh*Gw, D
    return sd


def from_clip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """OpenAI CLIP's and OpenCLIP's checkpoints (``visual.conv1``, ``visual.transformer.resblocks.N``
    ...): the image tower's keys; the text tower's are left out. Its projection into the joint
    embedding, ``visual.proj`` (D, E), is the classifier (E outputs, bias zero), as in timm. Also
    the base of the Perception Encoder's layout (:mod:`.eva`), whose largest towers have no
    class token."""
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out = rename_keys(sd, [
        (r"^conv1\.", "patch_embed.proj."),
        (r"^ln_pre\.", "norm_pre."),
        (r"^ln_post\.", "norm."),
        (r"^transformer\.resblocks\.(\d+)\.", r"blocks.\1."),
        *_MHA_BLOCK_RENAMES,
        (r"\.mlp\.c_fc\.", ".mlp.fc1."),
        (r"\.mlp\.c_proj\.", ".mlp.fc2."),
    ])
    if "class_embedding" in out:
        out["cls_token"] = out.pop("class_embedding").view(1, 1, -1)  # D -> 1, 1, D
    out["pos_embed"] = out.pop("positional_embedding").unsqueeze(0)  # 1 + N, D -> 1, 1 + N, D
    if "proj" in out:
        proj = out.pop("proj")  # D, E
        out["head.weight"], out["head.bias"] = proj.t(), proj.new_zeros(proj.shape[1])
    return out


@register_converter("vit", "official")
def _from_official(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The ViT authors' JAX release (google-research/vision_transformer ``.npz`` files), the
    DINOv2 authors' PyTorch one (:func:`_from_dinov2`), or OpenAI CLIP's / OpenCLIP's
    (:func:`from_clip`)."""
    if "mask_token" in sd:
        return _from_dinov2(sd)
    for prefix in ("visual.", "module.visual."):
        if prefix + "conv1.weight" in sd:
            return from_clip(sd, prefix)
    if "embedding/kernel" not in sd:
        raise KeyError("embedding/kernel")
    depth = len(model.blocks)
    out: dict[str, Tensor] = {}
    hybrid = any(k.startswith("conv_root") for k in sd)
    if hybrid:
        b = "patch_embed.backbone."
        out[b + "stem.conv.weight"] = _jax_conv(sd["conv_root/kernel"])
        out[b + "stem.norm.weight"], out[b + "stem.norm.bias"] = sd["gn_root/scale"].flatten(), sd["gn_root/bias"].flatten()
        for s, stage in enumerate(model.patch_embed.backbone.stages):
            for u in range(len(stage.blocks)):
                src, dst = f"block{s + 1}/unit{u + 1}/", f"{b}stages.{s}.blocks.{u}."
                for j in (1, 2, 3):
                    out[f"{dst}conv{j}.weight"] = _jax_conv(sd[f"{src}conv{j}/kernel"])
                    out[f"{dst}norm{j}.weight"] = sd[f"{src}gn{j}/scale"].flatten()
                    out[f"{dst}norm{j}.bias"] = sd[f"{src}gn{j}/bias"].flatten()
                if f"{src}conv_proj/kernel" in sd:
                    out[f"{dst}downsample.conv.weight"] = _jax_conv(sd[f"{src}conv_proj/kernel"])
                    out[f"{dst}downsample.norm.weight"] = sd[f"{src}gn_proj/scale"].flatten()
                    out[f"{dst}downsample.norm.bias"] = sd[f"{src}gn_proj/bias"].flatten()
    out["patch_embed.proj.weight"] = _jax_conv(sd["embedding/kernel"])
    out["patch_embed.proj.bias"] = sd["embedding/bias"]
    if "cls" in sd:
        out["cls_token"] = sd["cls"]
    out["pos_embed"] = sd["Transformer/posembed_input/pos_embedding"]
    out["norm.weight"], out["norm.bias"] = sd["Transformer/encoder_norm/scale"], sd["Transformer/encoder_norm/bias"]
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = src + "MultiHeadDotProductAttention_1/"
        out[dst + "norm1.weight"], out[dst + "norm1.bias"] = sd[src + "LayerNorm_0/scale"], sd[src + "LayerNorm_0/bias"]
        out[dst + "norm2.weight"], out[dst + "norm2.bias"] = sd[src + "LayerNorm_2/scale"], sd[src + "LayerNorm_2/bias"]
        # query/key/value kernels are (D, nH, hd): flatten the heads, transpose to (out, in)
        out[dst + "attn.qkv.weight"] = torch.cat([sd[f"{att}{n}/kernel"].flatten(1).T for n in ("query", "key", "value")])
        out[dst + "attn.qkv.bias"] = torch.cat([sd[f"{att}{n}/bias"].flatten() for n in ("query", "key", "value")])
        out[dst + "attn.proj.weight"] = sd[att + "out/kernel"].flatten(0, 1).T  # (nH*hd, D) -> (D, nH*hd)
        out[dst + "attn.proj.bias"] = sd[att + "out/bias"]
        for j in (0, 1):
            out[f"{dst}mlp.fc{j + 1}.weight"] = sd[f"{src}MlpBlock_3/Dense_{j}/kernel"].T
            out[f"{dst}mlp.fc{j + 1}.bias"] = sd[f"{src}MlpBlock_3/Dense_{j}/bias"]
    if "head/kernel" in sd:
        out["head.weight"], out["head.bias"] = sd["head/kernel"].T, sd["head/bias"]
    return out
