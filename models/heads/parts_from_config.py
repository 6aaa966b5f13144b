"""The one place the heads' parts (models/heads/parts.py) are built from config, beside the config keys they read.

A recipe (models/heads/clipfsar.py, models/heads/mcdp.py) builds its backbone, takes VFAM and the parts from here,
adds its own modules and hands them all to its constructor (detectron2's `from_config`); no recipe builds from
another. The parts with parameters are made in a fixed order (VFAM, then `frame_proj`, `text_proj`, `temporal`),
the order in which a seeded init drew them when the recorded head states were written (tests/test_head_contract.py);
a recipe's own modules come between VFAM and `build_prototype_parts` for the same reason.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from models.clip import CLIPBackbone
from models.heads.parts import (
    FRAME_MOTIONS,
    VIDEO_TEXT_TARGETS,
    ClassTextSource,
    FrameEncoder,
    OTAMMatcher,
    TemporalModulator,
    TextEvalRule,
    VideoTextLoss,
)
from models.text_cache import ClassTextCache
from models.vfam import VFAM
from utils.config import NON_NEGATIVE, POSITIVE, PROBABILITY, CfgNode, Rule, one_of, rules, section


def add_parts_config(cfg: CfgNode) -> None:
    _H = section(section(cfg, "VIDEO"), "HEAD")
    _H.FRAME_FEATURE = "global"  # frame descriptor: global (CLIP image embedding) or patch_map (centred pooled tokens)
    _H.PATCH_POOL = 2  # patch_map: tokens average-pooled to PATCH_POOL x PATCH_POOL cells (descriptor D*P*P)
    # Motion in the frame descriptors. CLIP-FSAR: none (each frame encoded alone; its temporal transformer has no
    # positional encoding, so it cannot tell a frame's neighbours). difference: each descriptor concatenated with
    # its change to the next frame (twice the width). pixel_difference: the tower encodes each frame's pixel change
    # to the next instead of the frame (TSN's RGB difference). The last frame repeats the previous change. For
    # towers trained from scratch (docs/lineage.md).
    _H.FRAME_MOTION = "none"
    _H.PROJ_DIM = 0  # >0: learned linear map of frame descriptors (and text) to this width before the transformer
    _H.TRANSFORMER_HEADS = 8  # attention heads of the temporal transformer (CLIP-FSAR: 8, fixed in its code)
    _H.TRANSFORMER_MLP_DIM = 2048  # hidden width of its feed-forward layers (CLIP-FSAR: 2048 for RN50 and ViT-B/16)
    # Dropout on the attention branch's output, after its output projection (CLIP-FSAR's Attention_qkv.to_out);
    # the attention weights themselves are never dropped. CLIP-FSAR: 0.2.
    _H.TRANSFORMER_DROPOUT = 0.2
    _H.TRANSFORMER_FFN_DROPOUT = 0.05  # dropout after each feed-forward Linear (CLIP-FSAR: 0.05)
    # CLIP-FSAR adds the attention and feed-forward branches to the residual unscaled: 1.0 (no parameter). Below
    # 1: each branch times a learned per-channel scale starting here (LayerScale); 0 starts the transformer as the
    # identity, so the prototypes start as the frame descriptors (from scratch the lineage's branches outweigh
    # the descriptors at init; docs/lineage.md).
    _H.TRANSFORMER_LAYER_SCALE = 1.0
    # CLIP-FSAR appends each support's class-text token to its frames in the temporal transformer (prototype
    # modulation): True. False: supports pass through it alone, as queries do (a text tower trained from scratch
    # gives each class an arbitrary token that marks the prototype instead of describing it).
    _H.SUPPORT_TEXT_TOKEN = True
    # CLIP-FSAR's cos_sim is x.y / (|x||y| + 0.01): used for the frame distances and the training video-text
    # logits (its test-time EVAL_TEXT / COMBINE normalise exactly, and so do ours). 0: the exact cosine.
    _H.COSINE_EPS = 0.01
    _H.PROMPT_TEMPLATE = "a photo of {}"  # text prompt; {} is replaced by the class name
    _H.OTAM_LAMBDA = 0.5  # OTAM soft-minimum temperature
    rules("VIDEO.HEAD", FRAME_MOTION=one_of(*FRAME_MOTIONS), PATCH_POOL=POSITIVE, PROJ_DIM=NON_NEGATIVE,
          TRANSFORMER_HEADS=POSITIVE, TRANSFORMER_MLP_DIM=POSITIVE, TRANSFORMER_DROPOUT=PROBABILITY,
          TRANSFORMER_FFN_DROPOUT=PROBABILITY, TRANSFORMER_LAYER_SCALE=PROBABILITY,
          COSINE_EPS=NON_NEGATIVE, OTAM_LAMBDA=POSITIVE)
    _T = section(cfg, "TRAIN")
    # Temporal transformer blocks, shared by queries and text-modulated supports. The only depth key, under
    # CLIP-FSAR's name (TRAIN.TRANSFORMER_DEPTH), so its YAMLs mean the same here. CLIP-FSAR reads 0 (or no key)
    # as 1 through a truthiness check; here 0 is refused rather than silently changed.
    _T.TRANSFORMER_DEPTH = 1
    _T.USE_CLASSIFICATION = True  # add the video-text loss over all classes of the split
    _T.USE_CLASSIFICATION_VALUE = 1.0  # its weight (CLIP-FSAR configs use 1.5 to 3.0)
    # What the video-text loss pulls each video's embedding towards. CLIP-FSAR: class_text (its class's prompt
    # through the text encoder). orthogonal: one fixed orthonormal code per class of the split (seeded; random unit
    # codes when the split has more classes than the embedding has dimensions). For text towers that carry no
    # meaning: there order-swapped class names encode to near-identical texts (cosine 0.97-0.99), so the loss
    # cannot separate the fine-grained pairs (docs/lineage.md). Needs EVAL_TEXT, COMBINE and AMCAP off.
    _T.VIDEO_TEXT_TARGETS = "class_text"
    _T.MERGE_BEFORE = False  # average shots per class before the temporal transformer (else after)
    _T.SINGLE_DIRECT = False  # OTAM query->support only (else bidirectional)
    _T.EVAL_TEXT = False  # test time: classify queries by video-text similarity only
    _T.COMBINE = False  # test time: p_text^TEXT_COFF * p_visual^(1 - TEXT_COFF)
    # COMBINE: exponent of the text probabilities, taken literally: 0 is visual only. (CLIP-FSAR's truthiness
    # check turns TEXT_COFF 0 into its default 0.9; write 0.9 for that.)
    _T.TEXT_COFF = 0.9
    rules("TRAIN", TRANSFORMER_DEPTH=Rule("> 0 (CLIP-FSAR reads 0 as 1; write 1)", lambda v: v > 0),
          USE_CLASSIFICATION_VALUE=NON_NEGATIVE, VIDEO_TEXT_TARGETS=one_of(*VIDEO_TEXT_TARGETS),
          TEXT_COFF=PROBABILITY)


def frame_encoder_from_config(cfg: CfgNode, keep_tokens: bool = False) -> FrameEncoder:
    """The frame encoder of VIDEO.HEAD; `keep_tokens` for a recipe that reads the dense token grid (AMCAP)."""
    head = cfg.VIDEO.HEAD
    return FrameEncoder(head.FRAME_FEATURE, head.PATCH_POOL, keep_tokens, head.FRAME_MOTION)


def build_vfam(cfg: CfgNode, backbone: CLIPBackbone) -> VFAM | None:
    """VFAM (VFAM.ENABLE; None when off), fusing entity context into the frame encoder's descriptors."""
    if not cfg.VFAM.ENABLE:
        return None
    dim = backbone.embed_dim
    return VFAM(**VFAM.from_config(cfg, dim, frame_encoder_from_config(cfg).descriptor_dim(dim)))


def build_prototype_parts(cfg: CfgNode, backbone: CLIPBackbone, vfam: VFAM | None = None, *,
                          keep_tokens: bool = False, text_cache: ClassTextCache | None = None) -> dict[str, Any]:
    """The parts of a prototype head (models/heads/prototype.py:PrototypeHead's keyword arguments) from `cfg`, around
    `backbone` and `vfam`; `text_cache` is the class-text cache to share (AMCAP's), else a new one."""
    head, train = cfg.VIDEO.HEAD, cfg.TRAIN
    frame_encoder = frame_encoder_from_config(cfg, keep_tokens)
    input_dim = frame_encoder.input_dim(backbone.embed_dim)
    width = head.PROJ_DIM if head.PROJ_DIM > 0 else input_dim  # the temporal transformer's
    frame_proj = nn.Linear(input_dim, width) if head.PROJ_DIM > 0 else nn.Identity()
    # CLIP-FSAR feeds the raw text embedding (same joint space as the global frame embedding). Any other
    # descriptor needs a learned map; a text vector tiled over cells would be erased by the centring.
    # Without support text tokens (SUPPORT_TEXT_TOKEN False) there is no text to map.
    lineage_text = head.FRAME_FEATURE == "global" and head.FRAME_MOTION == "none" and head.PROJ_DIM <= 0
    needs_map = head.SUPPORT_TEXT_TOKEN and not lineage_text
    text_proj = nn.Linear(backbone.embed_dim, width) if needs_map else nn.Identity()
    temporal = TemporalModulator(width, train.TRANSFORMER_DEPTH, head.TRANSFORMER_HEADS, head.TRANSFORMER_MLP_DIM,
                                 head.TRANSFORMER_DROPOUT, head.TRANSFORMER_FFN_DROPOUT, head.TRANSFORMER_LAYER_SCALE,
                                 text_token=head.SUPPORT_TEXT_TOKEN, merge_before=train.MERGE_BEFORE)
    video_text_loss = None
    if train.USE_CLASSIFICATION and train.USE_CLASSIFICATION_VALUE != 0:
        video_text_loss = VideoTextLoss(train.USE_CLASSIFICATION_VALUE, head.COSINE_EPS, train.VIDEO_TEXT_TARGETS)
    return dict(backbone=backbone, vfam=vfam, frame_encoder=frame_encoder, frame_proj=frame_proj,
                text_proj=text_proj, temporal=temporal, class_text=ClassTextSource(head.PROMPT_TEMPLATE, text_cache),
                matcher=OTAMMatcher(head.OTAM_LAMBDA, head.COSINE_EPS, bidirectional=not train.SINGLE_DIRECT),
                text_eval=TextEvalRule(train.EVAL_TEXT, train.COMBINE, train.TEXT_COFF),
                video_text_loss=video_text_loss)
