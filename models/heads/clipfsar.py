"""CLIP-FSAR head (CNN_OTAM_CLIPFSAR): CLIP frame features, text prototype modulation, bidirectional OTAM.

The recipe of parts (models/heads/prototype.py) whose support text token is the class's fixed prompt embedding.

Per episode: one backbone pass over support and query frames; a temporal transformer (CLIP-FSAR's Transformer_v1)
over each query's frames and over each support's frames plus one class-text token ("a photo of {name}" through the
frozen text encoder); shots averaged per class (before the transformer with MERGE_BEFORE); frame distances 1 - cos
with CLIP-FSAR's cos_sim, x.y / (|x||y| + 0.01); OTAM distance in both directions; logits = -distance. Training
adds USE_CLASSIFICATION_VALUE * CE of video-text logits over all classes of the split (learnable scale). At test
time EVAL_TEXT / COMBINE use the text logits as CLIP-FSAR does. Nothing computed for queries reads their labels:
only the loss uses target labels. CLIP-FSAR's own checkpoints load through models/heads/clipfsar_checkpoint.py.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from models.build import HEAD_REGISTRY
from models.clip import CLIPBackbone
from models.heads.base import VideoFeatures
from models.heads.parts import (  # noqa: F401  (re-exported: the lineage's names for its head's pieces)
    FRAME_FEATURES,
    FRAME_MOTIONS,
    VIDEO_TEXT_TARGETS,
    TemporalBlock,
    class_means,
    cosine_logits,
    lineage_cosine,
)
from models.heads.prototype import ClassTerms, PrototypeHead
from models.text_cache import ClassTextCache
from models.vfam import VFAM
from utils.config import NON_NEGATIVE, POSITIVE, PROBABILITY, CfgNode, Rule, one_of, rules, section
from utils.episode import Episode


def add_clipfsar_config(cfg: CfgNode) -> None:
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


def clipfsar_parts_from_config(cfg: CfgNode, text_cache: ClassTextCache | None = None) -> dict[str, Any]:
    """The keyword arguments of the prototype-modulation parts (models/heads/prototype.py) from `cfg`."""
    head, train = cfg.VIDEO.HEAD, cfg.TRAIN
    backbone = CLIPBackbone(**CLIPBackbone.from_config(cfg))
    vfam = None
    if cfg.VFAM.ENABLE:
        dim = backbone.embed_dim
        out_dim = dim * head.PATCH_POOL ** 2 if head.FRAME_FEATURE == "patch_map" else dim
        vfam = VFAM(**VFAM.from_config(cfg, dim, out_dim))
    return dict(
        backbone=backbone, vfam=vfam, frame_feature=head.FRAME_FEATURE, frame_motion=head.FRAME_MOTION,
        patch_pool=head.PATCH_POOL, proj_dim=head.PROJ_DIM, transformer_depth=train.TRANSFORMER_DEPTH,
        transformer_heads=head.TRANSFORMER_HEADS, transformer_mlp_dim=head.TRANSFORMER_MLP_DIM,
        transformer_dropout=head.TRANSFORMER_DROPOUT, transformer_ffn_dropout=head.TRANSFORMER_FFN_DROPOUT,
        transformer_layer_scale=head.TRANSFORMER_LAYER_SCALE, support_text_token=head.SUPPORT_TEXT_TOKEN,
        cosine_eps=head.COSINE_EPS,
        prompt_template=head.PROMPT_TEMPLATE, otam_lambda=head.OTAM_LAMBDA,
        use_classification=train.USE_CLASSIFICATION, classification_weight=train.USE_CLASSIFICATION_VALUE,
        video_text_targets=train.VIDEO_TEXT_TARGETS,
        merge_before=train.MERGE_BEFORE, single_direct=train.SINGLE_DIRECT, eval_text=train.EVAL_TEXT,
        combine=train.COMBINE, text_coff=train.TEXT_COFF, text_cache=text_cache)


@HEAD_REGISTRY.register()
class CNN_OTAM_CLIPFSAR(PrototypeHead):  # noqa: N801  (the lineage's registered name)
    """CLIP-FSAR: each support's text token is its class's "a photo of {name}" embedding (frozen text encoder)."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        return clipfsar_parts_from_config(cfg)

    def encode_videos(self, videos: Tensor, boxes: Tensor | None = None,
                      box_mask: Tensor | None = None) -> dict[str, Tensor]:
        """videos [B,T,3,H,W] (+ track boxes [B,T,K,4] / mask [B,T,K] for VFAM) -> "frames" [B,T,F] descriptors,
        "video_text" [B,T,D] joint-space embeddings and VFAM's inputs (models/heads/parts.py:FrameEncoder)."""
        videos = self.backbone.normalise(videos)  # uint8 pixels (exact crops) -> the tower's input
        return self.frame_encoder.encode(self.backbone, self.vfam, videos, boxes, box_mask)

    def class_terms(self, support: VideoFeatures, query: VideoFeatures, episode: Episode) -> ClassTerms:
        class_text = self.class_text_features(episode.class_names)  # [WAY, D]
        return ClassTerms(support_text=class_text[episode.support_labels.long()])

    def fixed_support_text(self, class_names: list[str]) -> Tensor:
        return self.class_text_features(class_names)
