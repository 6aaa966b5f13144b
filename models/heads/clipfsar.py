"""CLIP-FSAR head (CNN_OTAM_CLIPFSAR): CLIP frame features, text prototype modulation, bidirectional OTAM.

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.build import HEAD_REGISTRY
from models.clip import CLIPBackbone
from models.otam import otam_distance
from models.vfam import VFAM
from utils.config import (
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    CfgNode,
    ConfigError,
    Rule,
    rules,
    section,
)

FRAME_FEATURES = ("global", "patch_map")


def add_clipfsar_config(cfg: CfgNode) -> None:
    _H = section(section(cfg, "VIDEO"), "HEAD")
    _H.FRAME_FEATURE = "global"  # frame descriptor: global (CLIP image embedding) or patch_map (centred pooled tokens)
    _H.PATCH_POOL = 2  # patch_map: tokens average-pooled to PATCH_POOL x PATCH_POOL cells (descriptor D*P*P)
    _H.PROJ_DIM = 0  # >0: learned linear map of frame descriptors (and text) to this width before the transformer
    _H.TRANSFORMER_HEADS = 8  # attention heads of the temporal transformer (CLIP-FSAR: 8, fixed in its code)
    _H.TRANSFORMER_MLP_DIM = 2048  # hidden width of its feed-forward layers (CLIP-FSAR: 2048 for RN50 and ViT-B/16)
    # Dropout on the attention branch's output, after its output projection (CLIP-FSAR's Attention_qkv.to_out);
    # the attention weights themselves are never dropped. CLIP-FSAR: 0.2.
    _H.TRANSFORMER_DROPOUT = 0.2
    _H.TRANSFORMER_FFN_DROPOUT = 0.05  # dropout after each feed-forward Linear (CLIP-FSAR: 0.05)
    # CLIP-FSAR's cos_sim is x.y / (|x||y| + 0.01): used for the frame distances and the training video-text
    # logits (its test-time EVAL_TEXT / COMBINE normalise exactly, and so do ours). 0: the exact cosine.
    _H.COSINE_EPS = 0.01
    _H.PROMPT_TEMPLATE = "a photo of {}"  # text prompt; {} is replaced by the class name
    _H.OTAM_LAMBDA = 0.5  # OTAM soft-minimum temperature
    rules("VIDEO.HEAD", PATCH_POOL=POSITIVE, PROJ_DIM=NON_NEGATIVE, TRANSFORMER_HEADS=POSITIVE,
          TRANSFORMER_MLP_DIM=POSITIVE, TRANSFORMER_DROPOUT=PROBABILITY, TRANSFORMER_FFN_DROPOUT=PROBABILITY,
          COSINE_EPS=NON_NEGATIVE, OTAM_LAMBDA=POSITIVE)
    _T = section(cfg, "TRAIN")
    # Temporal transformer blocks, shared by queries and text-modulated supports. The only depth key, under
    # CLIP-FSAR's name (TRAIN.TRANSFORMER_DEPTH), so its YAMLs mean the same here. CLIP-FSAR reads 0 (or no key)
    # as 1 through a truthiness check; here 0 is refused rather than silently changed.
    _T.TRANSFORMER_DEPTH = 1
    _T.USE_CLASSIFICATION = True  # add the video-text loss over all classes of the split
    _T.USE_CLASSIFICATION_VALUE = 1.0  # its weight (CLIP-FSAR configs use 1.5 to 3.0)
    _T.MERGE_BEFORE = False  # average shots per class before the temporal transformer (else after)
    _T.SINGLE_DIRECT = False  # OTAM query->support only (else bidirectional)
    _T.EVAL_TEXT = False  # test time: classify queries by video-text similarity only
    _T.COMBINE = False  # test time: p_text^TEXT_COFF * p_visual^(1 - TEXT_COFF)
    # COMBINE: exponent of the text probabilities, taken literally: 0 is visual only. (CLIP-FSAR's truthiness
    # check turns TEXT_COFF 0 into its default 0.9; write 0.9 for that.)
    _T.TEXT_COFF = 0.9
    rules("TRAIN", TRANSFORMER_DEPTH=Rule("> 0 (CLIP-FSAR reads 0 as 1; write 1)", lambda v: v > 0),
          USE_CLASSIFICATION_VALUE=NON_NEGATIVE, TEXT_COFF=PROBABILITY)


class TemporalAttention(nn.Module):
    """CLIP-FSAR's Attention_qkv as self-attention: q/k/v projections without bias (stored as one [3d, d] matrix,
    q then k then v), softmax(q k^T / sqrt(d / heads)) v per head, then the output projection (with bias) and
    dropout on its output. With one head the lineage has no output projection, hence no dropout either."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"VIDEO.HEAD.TRANSFORMER_HEADS: transformer width {dim} is not divisible by {heads} "
                              f"heads (pick a divisor of {dim})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        project_out = heads != 1
        self.to_out = nn.Linear(dim, dim) if project_out else nn.Identity()
        self.out_dropout = nn.Dropout(dropout) if project_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # [B, L, dim]
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, dim / heads]; no dropout on the weights
        return self.out_dropout(self.to_out(out.transpose(1, 2).reshape(batch, length, dim)))


class TemporalBlock(nn.Module):
    """One block of CLIP-FSAR's Transformer_v1: x = attn(LayerNorm(x)) + x; x = ffn(x) + x (no second norm)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, attn_dropout: float, ffn_dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = TemporalAttention(dim, heads, attn_dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(ffn_dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(ffn_dropout))

    def forward(self, x: Tensor) -> Tensor:  # [B, L, dim]
        x = self.attn(self.norm(x)) + x
        return self.ffn(x) + x


def class_means(features: Tensor, labels: Tensor, way: int) -> Tensor:
    """Average [S, ...] features per episode label 0..way-1 -> [way, ...] (vectorised, no per-class loop)."""
    onehot = F.one_hot(labels.long(), way).to(features.dtype)  # [S, way]
    counts = onehot.sum(0).clamp_min(1)
    flat = features.reshape(features.shape[0], -1)
    return ((onehot.t() @ flat) / counts[:, None]).reshape(way, *features.shape[1:])


def cosine_logits(a: Tensor, b: Tensor) -> Tensor:
    """[N, D] x [M, D] -> [N, M] exact cosine (CLIP-FSAR's test-time EVAL_TEXT / COMBINE)."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).t()


def lineage_cosine(x: Tensor, y: Tensor, eps: float, equation: str = "nd,md->nm") -> Tensor:
    """CLIP-FSAR's cos_sim x.y / (|x||y| + eps) over the last dimension, pairs chosen by `equation` (einsum of
    two operands); eps 0 gives the exact cosine. Computed in fp32, also under autocast (as the lineage does)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        if eps == 0:
            return torch.einsum(equation, F.normalize(x, dim=-1), F.normalize(y, dim=-1))
        inputs, output = equation.split("->")
        x_dims, y_dims = (term[:-1] for term in inputs.split(","))  # the operands' dims without the contracted one
        norms = torch.einsum(f"{x_dims},{y_dims}->{output}", x.norm(dim=-1), y.norm(dim=-1))
        return torch.einsum(equation, x, y) / (norms + eps)


def _clear_text_cache_after_load(module: "CNN_OTAM_CLIPFSAR", incompatible_keys: Any) -> None:
    module.clear_text_cache()


@HEAD_REGISTRY.register()
class CNN_OTAM_CLIPFSAR(nn.Module):  # noqa: N801  (the lineage's registered name)
    # `encode_videos` treats every video on its own (no episode context), so the evaluator may cache its outputs
    # per video id and call `forward_features` directly.
    supports_feature_cache = True

    def __init__(self, *, backbone: CLIPBackbone, frame_feature: str = "global", patch_pool: int = 2,
                 proj_dim: int = 0, transformer_depth: int = 1, transformer_heads: int = 8,
                 transformer_mlp_dim: int = 2048, transformer_dropout: float = 0.2,
                 transformer_ffn_dropout: float = 0.05, cosine_eps: float = 0.01,
                 prompt_template: str = "a photo of {}", otam_lambda: float = 0.5,
                 use_classification: bool = True, classification_weight: float = 1.0,
                 merge_before: bool = False, single_direct: bool = False, eval_text: bool = False,
                 combine: bool = False, text_coff: float = 0.9, vfam: VFAM | None = None):
        super().__init__()
        if frame_feature not in FRAME_FEATURES:
            raise ValueError(f"models/heads/clipfsar.py: VIDEO.HEAD.FRAME_FEATURE must be one of {FRAME_FEATURES}, "
                             f"got '{frame_feature}'")
        if "{}" not in prompt_template:
            raise ValueError(f"models/heads/clipfsar.py: VIDEO.HEAD.PROMPT_TEMPLATE needs a '{{}}' for the class "
                             f"name, got '{prompt_template}'")
        self.backbone = backbone
        self.frame_feature, self.patch_pool = frame_feature, patch_pool
        self.prompt_template, self.otam_lambda, self.cosine_eps = prompt_template, otam_lambda, cosine_eps
        self.use_classification, self.classification_weight = use_classification, classification_weight
        self.merge_before, self.single_direct = merge_before, single_direct
        self.eval_text, self.combine, self.text_coff = eval_text, combine, text_coff

        embed_dim = backbone.embed_dim
        descriptor_dim = embed_dim * patch_pool * patch_pool if frame_feature == "patch_map" else embed_dim
        self.model_dim = proj_dim if proj_dim > 0 else descriptor_dim
        self.frame_proj = nn.Linear(descriptor_dim, proj_dim) if proj_dim > 0 else nn.Identity()
        # VFAM (VFAM.ENABLE): tracked-entity context fused into the descriptors; its gate starts at 0.
        self.vfam = vfam
        self.needs_tokens = False  # subclasses that read the dense token grid per video (AMCAP) set this
        # CLIP-FSAR feeds the raw text embedding (same joint space as the global frame embedding). Any other
        # descriptor needs a learned map; a text vector tiled over cells would be erased by the centring.
        lineage_text = frame_feature == "global" and proj_dim <= 0
        self.text_proj = nn.Identity() if lineage_text else nn.Linear(embed_dim, self.model_dim)
        self.temporal = nn.Sequential(*[
            TemporalBlock(self.model_dim, transformer_heads, transformer_mlp_dim, transformer_dropout,
                          transformer_ffn_dropout) for _ in range(transformer_depth)])
        # CLIP-FSAR's learnable `scale` (init 1). Only the video-text loss trains it; frozen otherwise so that
        # every trainable parameter receives a gradient (DDP without find_unused_parameters).
        self.use_text_loss = use_classification and classification_weight != 0
        self.text_logit_scale = nn.Parameter(torch.ones(()), requires_grad=self.use_text_loss)
        self._text_cache: dict[str, Tensor] = {}
        # Loaded weights may change the text tower; cached features would then be stale.
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        head, train = cfg.VIDEO.HEAD, cfg.TRAIN
        backbone = CLIPBackbone(**CLIPBackbone.from_config(cfg))
        vfam = None
        if cfg.VFAM.ENABLE:
            dim = backbone.embed_dim
            out_dim = dim * head.PATCH_POOL ** 2 if head.FRAME_FEATURE == "patch_map" else dim
            vfam = VFAM(**VFAM.from_config(cfg, dim, out_dim))
        return dict(
            backbone=backbone, vfam=vfam, frame_feature=head.FRAME_FEATURE,
            patch_pool=head.PATCH_POOL, proj_dim=head.PROJ_DIM, transformer_depth=train.TRANSFORMER_DEPTH,
            transformer_heads=head.TRANSFORMER_HEADS, transformer_mlp_dim=head.TRANSFORMER_MLP_DIM,
            transformer_dropout=head.TRANSFORMER_DROPOUT, transformer_ffn_dropout=head.TRANSFORMER_FFN_DROPOUT,
            cosine_eps=head.COSINE_EPS,
            prompt_template=head.PROMPT_TEMPLATE, otam_lambda=head.OTAM_LAMBDA,
            use_classification=train.USE_CLASSIFICATION, classification_weight=train.USE_CLASSIFICATION_VALUE,
            merge_before=train.MERGE_BEFORE, single_direct=train.SINGLE_DIRECT, eval_text=train.EVAL_TEXT,
            combine=train.COMBINE, text_coff=train.TEXT_COFF)

    def param_groups(self) -> list[dict]:
        """Trainable parameters split into the backbone (own lr multiplier in the solver) and the head."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        return [dict(params=backbone, name="backbone"), dict(params=head, name="head")]

    # ------------------------------------------------------------------ text
    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def class_text_features(self, names: list[str]) -> Tensor:
        """[N, D] text embeddings of `prompt_template` filled with each name; cached while the text tower is frozen."""
        if self.backbone.text_trainable:
            return self.backbone.encode_text(self.backbone.tokenize([self.prompt_template.format(n) for n in names]))
        missing = sorted({n for n in names if n not in self._text_cache})
        if missing:
            device_type = self.backbone.device.type
            # Cached once per name, so computed in full precision whatever autocast context this call is in.
            with torch.no_grad(), torch.autocast(device_type=device_type, enabled=False):
                ids = self.backbone.tokenize([self.prompt_template.format(n) for n in missing])
                features = self.backbone.encode_text(ids).float()
            self._text_cache.update(zip(missing, features, strict=True))
        device = self.text_logit_scale.device
        return torch.stack([self._text_cache[n].to(device) for n in names])

    # ------------------------------------------------------------------ encode
    def encode_videos(self, videos: Tensor, boxes: Tensor | None = None,
                      box_mask: Tensor | None = None) -> dict[str, Tensor]:
        """videos [B,T,3,H,W] (+ track boxes [B,T,K,4] / mask [B,T,K] for VFAM) -> per-video features:
        "frames" [B,T,F] descriptors, "video_text" [B,T,D] joint-space embeddings, and what VFAM / AMCAP need.

        One backbone call; every video is encoded on its own, so the outputs can be cached per video."""
        num_videos, num_frames = videos.shape[:2]
        dense = self.frame_feature == "patch_map" or self.needs_tokens
        if self.vfam is not None:
            out = self.vfam.encode(self.backbone, videos, boxes, box_mask, dense=dense)
            glob, tokens = out["global"].flatten(0, 1), out["tokens"].flatten(0, 1) if dense else None
        else:
            enc = self.backbone.encode_frames(videos.flatten(0, 1), dense=dense)
            glob, tokens = enc["global"], enc.get("tokens")
        if self.frame_feature == "global":
            frames = video_text = glob  # [N, D]
        else:
            grid = tokens.permute(0, 3, 1, 2)  # [N, D, h, w]
            video_text = grid.mean(dim=(2, 3))  # the mean token: the part of the map centring removes
            cells = F.adaptive_avg_pool2d(grid, self.patch_pool).flatten(2)  # [N, D, P*P]
            frames = (cells - cells.mean(dim=2, keepdim=True)).flatten(1)  # centred per channel, [N, D*P*P]
        feats = {"frames": frames.reshape(num_videos, num_frames, -1),
                 "video_text": video_text.reshape(num_videos, num_frames, -1)}
        if self.vfam is not None:
            feats.update(frame_global=out["global"], entity_feats=out["entity_feats"], entity_mask=out["entity_mask"])
        if self.needs_tokens:
            feats["tokens"] = tokens.reshape(num_videos, num_frames, *tokens.shape[1:])
        return feats

    def frame_descriptors(self, feats: dict[str, Tensor]) -> Tensor:
        """[B,T,d] transformer inputs: descriptors with VFAM's entity context fused in, then projected."""
        frames = feats["frames"]
        if self.vfam is not None:
            frames = self.vfam(feats["frame_global"], frames, feats["entity_feats"], feats["entity_mask"])
        return self.frame_proj(frames)

    # ------------------------------------------------------------------ per-video outputs (eval cache)
    @property
    def static_support_text(self) -> bool:
        """True when a support's modulation token is its class's fixed prompt embedding (heads with episode-
        dependent class text, such as AMCAP's, return False)."""
        return True

    @torch.no_grad()
    def per_video_outputs(self, feats: dict[str, Tensor], class_names: list[str] | None = None) -> dict[str, Tensor]:
        """Eval-time outputs that depend on each video alone, for the feature cache (models/feature_cache.py).

        Videos as queries (`class_names` None): "query_tokens", their frames after the temporal transformer.
        Videos as supports (`class_names`: each support's own class): "support_tokens", their frames modulated
        by their class's text token, when that token is fixed and shots are merged after the transformer; else {}.
        """
        if self.training:
            raise RuntimeError("models/heads/clipfsar.py: per_video_outputs is for eval mode (trainable graph)")
        if class_names is None:
            return {"query_tokens": self.temporal(self.frame_descriptors(feats))}
        if self.merge_before or not self.static_support_text:
            return {}
        support = self.frame_descriptors(feats)
        text_tokens = self.text_proj(self.class_text_features(class_names).to(support.dtype))
        return {"support_tokens": self._modulate(support, text_tokens)}

    # ------------------------------------------------------------------ episode math
    def _modulate(self, support: Tensor, text_tokens: Tensor) -> Tensor:
        """support [S,T,d] with each one's text token [S,d] appended -> [S,T,d] after the temporal transformer."""
        tokens = torch.cat([support, text_tokens.to(support.dtype)[:, None]], dim=1)
        return self.temporal(tokens)[:, :support.shape[1]]

    def _prototypes(self, support: Tensor, text_tokens: Tensor, labels: Tensor, way: int) -> Tensor:
        """support [S,T,d], text_tokens [S,d] -> class prototypes [way,T,d] modulated by the class text."""
        if self.merge_before:
            return self._modulate(class_means(support, labels, way), class_means(text_tokens, labels, way))
        return class_means(self._modulate(support, text_tokens), labels, way)

    def _otam_distances(self, queries: Tensor, prototypes: Tensor) -> Tensor:
        """queries [Q,T,d], prototypes [C,T,d] -> OTAM distances [Q, C] over frame distances 1 - cos."""
        frame_dists = 1 - lineage_cosine(queries, prototypes, self.cosine_eps, "qtd,csd->qcts")  # [Q, C, Tq, Ts]
        return otam_distance(frame_dists, self.otam_lambda, bidirectional=not self.single_direct)

    def forward_features(self, support_feats: dict[str, Tensor], target_feats: dict[str, Tensor],
                         episode: dict) -> dict[str, Any]:
        """Episode math on `encode_videos` outputs; returns logits [Q, WAY] and (training) the losses."""
        class_text = self.class_text_features(list(episode["class_names"]))  # [WAY, D]
        return self.episode_outputs(support_feats, target_feats, episode, class_text[episode["support_labels"].long()])

    def episode_outputs(self, support_feats: dict[str, Tensor], target_feats: dict[str, Tensor], episode: dict,
                        support_text: Tensor, extra_logits: Tensor | None = None,
                        video_class_text: Tensor | None = None) -> dict[str, Any]:
        """Prototype modulation + OTAM given each support's class-text token `support_text` [S, D].

        Heads built on this one (MCDP) pass `extra_logits` [Q, WAY] (added to -OTAM distance) and
        `video_class_text` [S+Q, N_split, D] (per-video class texts for the video-text loss)."""
        support_labels = episode["support_labels"].long()
        way = len(episode["class_names"])
        # "query_tokens" / "support_tokens": per-video outputs from the eval feature cache (per_video_outputs)
        queries = target_feats.get("query_tokens")
        if queries is None:
            queries = self.temporal(self.frame_descriptors(target_feats))
        if "support_tokens" in support_feats:
            prototypes = class_means(support_feats["support_tokens"], support_labels, way)
        else:
            support = self.frame_descriptors(support_feats)
            text_tokens = self.text_proj(support_text.to(support.dtype))  # [S, d]
            prototypes = self._prototypes(support, text_tokens, support_labels, way)
        dists = self._otam_distances(queries, prototypes)  # [Q, WAY]
        logits = -dists if extra_logits is None else extra_logits - dists
        if not self.training and (self.eval_text or self.combine):
            logits = self._text_eval_logits(logits, dists, target_feats, episode)
        output: dict[str, Any] = {"logits": logits, "losses": {}}
        if self.training:
            output["losses"] = self._losses(logits, support_feats, target_feats, episode, video_class_text)
            output["loss"] = sum(output["losses"].values())
        return output

    def _text_eval_logits(self, logits: Tensor, dists: Tensor, target_feats: dict[str, Tensor],
                          episode: dict) -> Tensor:
        """CLIP-FSAR's test-time EVAL_TEXT (text only) and COMBINE (text^c * visual^(1-c)) probabilities."""
        class_text = self.class_text_features(list(episode["class_names"]))
        query_text = target_feats["video_text"].float().mean(1)  # [Q, D]
        text_probs = F.softmax(self.text_logit_scale * cosine_logits(query_text, class_text), dim=1)
        if self.eval_text:
            return text_probs
        num_frames = target_feats["frames"].shape[1]  # CLIP-FSAR's constant 8 is its number of frames
        visual_probs = F.softmax((num_frames - dists) / num_frames, dim=1)
        return text_probs.pow(self.text_coff) * visual_probs.pow(1.0 - self.text_coff)

    def _losses(self, logits: Tensor, support_feats: dict[str, Tensor], target_feats: dict[str, Tensor],
                episode: dict, video_class_text: Tensor | None = None) -> dict[str, Tensor]:
        losses = {"otam_ce": F.cross_entropy(logits, episode["target_labels"].long())}
        if self.use_text_loss:
            if "split_class_names" not in episode:
                raise KeyError("models/heads/clipfsar.py: TRAIN.USE_CLASSIFICATION needs episode['split_class_names']")
            video_text = torch.cat([support_feats["video_text"], target_feats["video_text"]]).float().mean(1)
            if video_class_text is None:
                split_text = self.class_text_features(list(episode["split_class_names"]))  # [N_split, D]
                cos = lineage_cosine(video_text, split_text, self.cosine_eps)  # [S+Q, N_split]
            else:  # per-video class texts [S+Q, N_split, D]
                cos = lineage_cosine(video_text, video_class_text, self.cosine_eps, "nd,ncd->nc")
            class_logits = self.text_logit_scale * cos
            real_labels = torch.cat([episode["real_support_labels"], episode["real_target_labels"]]).long()
            losses["video_text_ce"] = self.classification_weight * F.cross_entropy(class_logits, real_labels)
        return losses

    def _backbone_uses_batch_statistics(self) -> bool:
        """True while training with BatchNorm layers in training mode in the backbone (RN50 not frozen)."""
        return self.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                                     for m in self.backbone.modules())

    def forward(self, episode: dict, features: tuple[dict, dict] | None = None) -> dict[str, Any]:
        """One backbone pass over cat(support, target) videos (two, support then target, while the backbone has
        training-mode BatchNorm), then `forward_features`; `features` (support, target) from a per-video cache
        skip the encoding (models/feature_cache.py)."""
        if features is not None:
            return self.forward_features(*features, episode)
        support, target = episode["support_set"], episode["target_set"]
        with_boxes = self.vfam is not None and "support_boxes" in episode
        if self._backbone_uses_batch_statistics():
            # CLIP-FSAR encodes supports and queries in two backbone calls, so a training-mode BatchNorm (RN50
            # fine-tuned) normalises each set with its own batch statistics; one joint pass would mix them.
            def encode(role: str) -> dict[str, Tensor]:
                boxes = (episode[f"{role}_boxes"], episode[f"{role}_box_mask"]) if with_boxes else (None, None)
                return self.encode_videos(episode[f"{role}_set"], *boxes)

            return self.forward_features(encode("support"), encode("target"), episode)
        boxes = mask = None
        if with_boxes:
            boxes = torch.cat([episode["support_boxes"], episode["target_boxes"]])
            mask = torch.cat([episode["support_box_mask"], episode["target_box_mask"]])
        feats = self.encode_videos(torch.cat([support, target]), boxes, mask)
        num_support = support.shape[0]
        support_feats = {k: v[:num_support] for k, v in feats.items()}
        target_feats = {k: v[num_support:] for k, v in feats.items()}
        return self.forward_features(support_feats, target_feats, episode)
