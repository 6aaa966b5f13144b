"""CLIP-FSAR's own checkpoints (alibaba-mmai-research/CLIP-FSAR) in our CLIP-FSAR head, and refusal of our pre-fix
temporal-block checkpoints. Called by the prototype heads' `state_from_checkpoint` (models/heads/prototype.py), the
one door every weight file goes through (CNN_OTAM_CLIPFSAR; MCDP_FSAR with VFAM and AMCAP off is the same model).

What CLIP-FSAR writes (its utils/checkpoint.py `save_checkpoint`): a `.pyth` holding {"epoch": int, "model_state":
state dict, "optimizer_state": Adam state, "cfg": JSON text} (+ "model_ema_state" with EMA). Only tensors, numbers,
strings and containers, so `torch.load(weights_only=True)` (utils.checkpoint.load_checkpoint) reads it; tensors
saved from GPU come back on the CPU. "model_state" is the state of its `BaseVideoModel`: an `Identity` backbone
without weights and `head` = CNN_OTAM_CLIPFSAR, whose parameters are

    head.backbone.*                                     OpenAI CLIP's image tower (`clip.load(name).visual`)
    head.context2.layers.{i}.0.norm.{weight,bias}       Transformer_v1: LayerNorm before attention
    head.context2.layers.{i}.0.fn.to_{q,k,v}.weight     q/k/v projections, no bias
    head.context2.layers.{i}.0.fn.to_out.0.{weight,bias}  output projection (absent with one head)
    head.context2.layers.{i}.1.net.{0,3}.{weight,bias}  feed-forward Linear layers
    head.scale                                          [1] video-text logit scale

`mid_layer` and `classification_layer` are empty nn.Sequential (no weights). The text tower is not saved: CLIP-FSAR
encodes the prompts once, when the model is built, with the pretrained OpenAI weights; so the converted state takes
the text tower from the model, which must be built with VIDEO.HEAD.PRETRAINED openai for CLIP-FSAR's logits.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from utils.checkpoint import CheckpointError, describe_key_diff
from utils.logger import get_logger

logger = get_logger(__name__)

# CLIP-FSAR hard-codes its temporal transformer's head count (Transformer_v1(heads=8, dim_head=dim // 8)).
LINEAGE_HEADS = 8

# OpenAI CLIP's image-tower parameter names (ViT and ModifiedResNet). open_clip keeps exactly these names under
# `visual.`, and models/clip.py keeps the open_clip model as `backbone.model`.
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_OPENAI_VISUAL = re.compile("|".join([
    # ViT
    r"conv1\.weight", r"class_embedding", r"positional_embedding", r"ln_(pre|post)\.(weight|bias)", r"proj",
    r"transformer\.resblocks\.\d+\.(ln_1|ln_2)\.(weight|bias)",
    r"transformer\.resblocks\.\d+\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
    r"transformer\.resblocks\.\d+\.mlp\.(c_fc|c_proj)\.(weight|bias)",
    # ModifiedResNet (RN50): three stem convolutions, bottleneck stages, attention pool
    r"conv[123]\.weight", rf"bn[123]\.{_BN}",
    r"layer[1-4]\.\d+\.conv[123]\.weight", rf"layer[1-4]\.\d+\.bn[123]\.{_BN}",
    r"layer[1-4]\.\d+\.downsample\.0\.weight", rf"layer[1-4]\.\d+\.downsample\.1\.{_BN}",
    r"attnpool\.positional_embedding", r"attnpool\.[qkvc]_proj\.(weight|bias)",
]))
_OUR_VISUAL = "backbone.model.visual."

# Transformer_v1 block i -> our TemporalBlock i (models/heads/parts.py). q/k/v are concatenated (see below).
_LAYER = re.compile(r"context2\.layers\.(?P<i>\d+)\.(?P<rest>.+)")
_BLOCK_MAP = {
    "0.norm.weight": "norm.weight", "0.norm.bias": "norm.bias",
    "0.fn.to_out.0.weight": "attn.to_out.weight", "0.fn.to_out.0.bias": "attn.to_out.bias",
    "1.net.0.weight": "ffn.0.weight", "1.net.0.bias": "ffn.0.bias",
    "1.net.3.weight": "ffn.3.weight", "1.net.3.bias": "ffn.3.bias",
}
_QKV = ("0.fn.to_q.weight", "0.fn.to_k.weight", "0.fn.to_v.weight")  # stacked as our attn.qkv.weight [3d, d]

# Our head before issue #13: nn.MultiheadAttention (q/k/v biases, dropout on the attention weights) and a second
# LayerNorm before the feed-forward layers.
_PRE_FIX_BLOCK = re.compile(r"^(module\.)?temporal\.\d+\.(norm1\.|norm2\.|attn\.in_proj_weight|attn\.in_proj_bias|"
                            r"attn\.out_proj\.)")


def _common_prefix(keys: list[str]) -> str:
    """The wrapper prefix every key shares: "module." (DistributedDataParallel), "head." (BaseVideoModel), both."""
    prefix = ""
    for part in ("module.", "head."):
        if keys and all(k.startswith(prefix + part) for k in keys):
            prefix += part
    return prefix


def _lineage_state(checkpoint: Mapping) -> tuple[dict[str, Tensor], str] | None:
    """(CLIP-FSAR's head state with keys relative to its head, the stripped prefix), or None when `checkpoint` is
    not in its format: a dict with "model_state", or a bare state dict with Transformer_v1 (`context2.layers`) keys."""
    if "model_state" in checkpoint and isinstance(checkpoint["model_state"], Mapping):
        state = checkpoint["model_state"]
    elif any(_LAYER.match(re.sub(r"^(module\.)?(head\.)?", "", str(k))) for k in checkpoint):
        state = checkpoint
    else:
        return None
    prefix = _common_prefix([str(k) for k in state])
    return {str(k)[len(prefix):]: v for k, v in state.items()}, prefix


def _map_lineage_keys(state: dict[str, Tensor], prefix: str, source: str) -> dict[str, Tensor]:
    """Rename CLIP-FSAR's head keys to ours; any key without a rule is a CheckpointError listing them."""
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        layer = _LAYER.fullmatch(key)
        if key.startswith("backbone.") and _OPENAI_VISUAL.fullmatch(key[len("backbone."):]):
            out[_OUR_VISUAL + key[len("backbone."):]] = value
        elif key == "scale":
            # theirs [1], ours a scalar; another shape stays as it is, to be named in the key diff
            out["text_logit_scale"] = value.reshape(()) if value.numel() == 1 else value
        elif layer and layer["rest"] in _BLOCK_MAP:
            out[f"temporal.{layer['i']}.{_BLOCK_MAP[layer['rest']]}"] = value
        elif layer and layer["rest"] in _QKV:
            qkv.setdefault(layer["i"], {})[layer["rest"]] = value
        else:
            unmapped.append(key)
    for i, parts in qkv.items():
        absent = [name for name in _QKV if name not in parts]
        if absent:
            unmapped.extend(f"context2.layers.{i}.{name} (its q/k/v partners are absent)" for name in parts)
            continue
        out[f"temporal.{i}.attn.qkv.weight"] = torch.cat([parts[name] for name in _QKV])
    if unmapped:
        more = f", ... ({len(unmapped) - 8} more)" if len(unmapped) > 8 else ""
        shown = ", ".join(prefix + k for k in sorted(unmapped)[:8]) + more
        raise CheckpointError(f"{source}: CLIP-FSAR checkpoint keys with no counterpart in our CLIP-FSAR head: "
                              f"{len(unmapped)}: {shown} (is this a CNN_OTAM_CLIPFSAR checkpoint?)")
    return out


def _fill_from_model(mapped: dict[str, Tensor], model: nn.Module, source: str) -> dict[str, Tensor]:
    """Complete `mapped` with what CLIP-FSAR does not save (the text tower, frozen unused parameters); any other
    difference from the model is a CheckpointError with the key diff in our names."""
    own = model.state_dict()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = set(own) - set(mapped)
    kept = {k for k in missing if (k.startswith("backbone.model.") and not k.startswith(_OUR_VISUAL))
            or (k not in trainable and not k.startswith(("temporal.", _OUR_VISUAL)))}
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
              if k in own and v.shape != own[k].shape]
    diff = describe_key_diff(set(own) - kept, set(mapped), shapes)
    if diff:
        raise CheckpointError(
            f"{source}: CLIP-FSAR checkpoint does not fit this model ({diff}; names are ours, see "
            f"models/heads/clipfsar_checkpoint.py) (build it as CLIP-FSAR's: the same BACKBONE_NAME, "
            f"FRAME_FEATURE global, PROJ_DIM 0, VFAM and AMCAP off, its TRAIN.TRANSFORMER_DEPTH)")
    if kept:
        logger.info("%s: %d tensors CLIP-FSAR does not save (text tower, unused scales) kept from the model",
                    source, len(kept))
    return {**{k: own[k] for k in kept}, **mapped}


def _check_head_count(model: nn.Module, source: str) -> None:
    blocks = getattr(model, "temporal", [])
    heads = {block.attn.heads for block in blocks}
    if heads and heads != {LINEAGE_HEADS}:
        raise CheckpointError(f"{source}: CLIP-FSAR's temporal transformer has {LINEAGE_HEADS} heads (fixed in its "
                              f"code), this model {sorted(heads)[0]} (set VIDEO.HEAD.TRANSFORMER_HEADS "
                              f"{LINEAGE_HEADS})")


def _refuse_pre_fix_head(state: Mapping, model: nn.Module, source: str) -> None:
    old = sorted(k for k in state if _PRE_FIX_BLOCK.match(str(k)))
    if not old:
        return
    prefix = _common_prefix([str(k) for k in state])
    diff = describe_key_diff(set(model.state_dict()), {str(k)[len(prefix):] for k in state}, [])
    raise CheckpointError(
        f"{source}: trained with the pre-fix temporal block ({old[0]}, ...: a second LayerNorm and q/k/v biases "
        f"that CLIP-FSAR's Transformer_v1 does not have); its weights compute something else in the corrected "
        f"block and cannot be mapped: {diff} (retrain)")


def convert_lineage_state(checkpoint: Mapping, model: nn.Module, source: str) -> dict[str, Tensor] | None:
    """A loaded checkpoint (`utils.checkpoint.load_checkpoint`'s dict) -> a complete state dict for `model` when it
    is CLIP-FSAR's format; None when it is not (our own checkpoints: load them as they are).

    Raises CheckpointError (message starting with `source`) when a CLIP-FSAR key has no counterpart, when the
    mapped weights do not fit the model (key diff in our names), when the model's head count is not CLIP-FSAR's
    8, and for checkpoints of our own head saved before the temporal-block fix (they need retraining).
    """
    found = _lineage_state(checkpoint)
    if found is None:
        ours = checkpoint.get("model", checkpoint)
        if isinstance(ours, Mapping):
            _refuse_pre_fix_head(ours, model, source)
        return None
    mapped = _map_lineage_keys(*found, source)
    _check_head_count(model, source)
    return _fill_from_model(mapped, model, source)
