"""The optimizer's parameter groups for our ViTs: which parameters are decayed, and each one's depth
for layer-wise lr decay (BEiT's, as timm's ``param_groups_layer_decay``). The trainer, the
benchmarks and the tests build AdamW from these groups.
"""

from __future__ import annotations

from torch import nn


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms, the class token and position embeddings are not decayed (timm, open_clip).
    The rank is the parameter's own, also when ZeRO-3 has partitioned it (``ds_shape``)."""
    return len(getattr(param, "ds_shape", param.shape)) < 2 or name.endswith(("cls_token", "pos_embed"))


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay (BEiT, timm): 0 for the patch and position
    embeddings, the class token and the pre-norm, i + 1 for block i, depth + 1 for the final norm and the head."""
    parts = name.split(".")
    if "blocks" in parts:
        return int(parts[parts.index("blocks") + 1]) + 1
    if parts[-1] in ("cls_token", "pos_embed") or "patch_embed" in parts or "norm_pre" in parts:
        return 0
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: [decayed, not decayed] (trainable parameters only). With ``layer_decay`` < 1
    (BEiT's layer-wise lr decay), one pair per depth instead, each with ``lr_scale`` =
    layer_decay ** (depth + 1 - layer_id): the head at the full rate, block i at
    layer_decay ** (depth - i), the embeddings at layer_decay ** (depth + 1). The trainer
    multiplies each group's rate by its ``lr_scale``, under the schedule."""
    if layer_decay == 1.0:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if no_weight_decay(name, p) else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decayed = layer_id(name, depth), not no_weight_decay(name, p)
        group = groups.setdefault(
            (layer, decayed),
            {
                "params": [],
                "weight_decay": weight_decay if decayed else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - layer),
                "layer": layer,
            },
        )
        group["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]
