"""The parts heads are composed of (docs/design.md §5): frame encoder, class-text source, temporal modulator, OTAM
matcher, video-text loss, test-time text rule. Each is built from a few numbers, so a test builds one alone;
models/heads/parts_from_config.py builds them from config, and a head receives them (models/heads/prototype.py).

Parts that own parameters are modules the head registers under the names its checkpoints use (`temporal`, and the
head's `frame_proj` / `text_proj` / `vfam` / `amcap`); the others hold a few numbers and are plain objects, so the
state dict of a head is exactly its parameter-owning parts'.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.clip import CLIPBackbone
from models.otam import otam_distance
from models.text_cache import ClassTextCache
from models.vfam import VFAM
from utils.config import ConfigError

FRAME_FEATURES = ("global", "patch_map")
FRAME_MOTIONS = ("none", "difference", "pixel_difference")
VIDEO_TEXT_TARGETS = ("class_text", "orthogonal")


# ---------------------------------------------------------------------------------------------- shared math
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


def change_to_next(x: Tensor) -> Tensor:
    """[B,T,...] -> [B,T,...]: each frame's change to the next frame (the last frame repeats the previous change; a
    one-frame video has none: zeros). Descriptors (FRAME_MOTION difference) or pixels (pixel_difference)."""
    change = x[:, 1:] - x[:, :-1]
    if change.shape[1] == 0:
        return torch.zeros_like(x)
    return torch.cat([change, change[:, -1:]], dim=1)


def with_motion(frames: Tensor) -> Tensor:
    """[B,T,d] descriptors -> [B,T,2d]: each one with its change to the next frame."""
    return torch.cat([frames, change_to_next(frames)], dim=-1)


# ---------------------------------------------------------------------------------------------- temporal modulator
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
    """One block of CLIP-FSAR's Transformer_v1: x = attn(LayerNorm(x)) + x; x = ffn(x) + x (no second norm).

    `layer_scale` 1 is the lineage's block (no parameter); below 1 each branch is multiplied by a learned
    per-channel scale starting at that value (LayerScale; 0: the block starts as the identity)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, attn_dropout: float, ffn_dropout: float,
                 layer_scale: float = 1.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = TemporalAttention(dim, heads, attn_dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(ffn_dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(ffn_dropout))
        self.attn_scale = self.ffn_scale = None
        if layer_scale != 1:
            self.attn_scale = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.ffn_scale = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:  # [B, L, dim]
        if self.attn_scale is None:
            x = self.attn(self.norm(x)) + x
            return self.ffn(x) + x
        x = self.attn(self.norm(x)) * self.attn_scale + x
        return self.ffn(x) * self.ffn_scale + x


class TemporalModulator(nn.Sequential):
    """CLIP-FSAR's temporal transformer (a stack of TemporalBlock, shared by queries and supports): over a query's
    frames, and over a support's frames plus its class-text token (prototype modulation). A Sequential, so its
    parameters keep the checkpoints' names `temporal.{i}.*`.

    `text_token` False: supports pass it without a class-text token, as queries do (SUPPORT_TEXT_TOKEN).
    `merge_before`: shots are averaged per class before it (CLIP-FSAR's MERGE_BEFORE), else after it."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, attn_dropout: float, ffn_dropout: float,
                 layer_scale: float = 1.0, *, text_token: bool = True, merge_before: bool = False):
        super().__init__(*[TemporalBlock(dim, heads, mlp_dim, attn_dropout, ffn_dropout, layer_scale)
                           for _ in range(depth)])
        self.dim, self.text_token, self.merge_before = dim, text_token, merge_before

    def modulate(self, support: Tensor, text_tokens: Tensor | None) -> Tensor:
        """support [S,T,d] with each one's text token [S,d] appended -> [S,T,d] after the transformer; without
        text tokens the supports pass through it as queries do."""
        if text_tokens is None:
            return self(support)
        tokens = torch.cat([support, text_tokens.to(support.dtype)[:, None]], dim=1)
        return self(tokens)[:, :support.shape[1]]

    def prototypes(self, support: Tensor, text_tokens: Tensor | None, labels: Tensor, way: int) -> Tensor:
        """support [S,T,d], text_tokens [S,d] (or None) -> class prototypes [way,T,d]; shots averaged before the
        transformer (`merge_before`) or after it."""
        if self.merge_before:
            text = None if text_tokens is None else class_means(text_tokens, labels, way)
            return self.modulate(class_means(support, labels, way), text)
        return class_means(self.modulate(support, text_tokens), labels, way)


# ---------------------------------------------------------------------------------------------- frame encoder
@dataclass
class FrameEncoder:
    """Videos -> per-video features through the backbone (and VFAM, which encodes entities on the same pass):
    "frames" [B,T,F] descriptors (CLIP's global embedding, or a centred pooled patch map), "video_text" [B,T,D]
    joint-space embeddings, VFAM's inputs, and with `keep_tokens` the dense token grid "tokens" (AMCAP).

    `motion` (FRAME_MOTION): none (CLIP-FSAR); pixel_difference encodes each frame's pixel change to the next
    instead of the frame (RGB difference); difference appends to each descriptor its change to the next frame
    (`add_motion`, after VFAM has fused its context into the descriptors)."""
    frame_feature: str = "global"
    patch_pool: int = 2
    keep_tokens: bool = False
    motion: str = "none"

    def __post_init__(self) -> None:
        if self.frame_feature not in FRAME_FEATURES:
            raise ValueError(f"models/heads/parts.py: VIDEO.HEAD.FRAME_FEATURE must be one of {FRAME_FEATURES}, "
                             f"got '{self.frame_feature}'")
        if self.motion not in FRAME_MOTIONS:
            raise ValueError(f"models/heads/parts.py: VIDEO.HEAD.FRAME_MOTION must be one of {FRAME_MOTIONS}, "
                             f"got '{self.motion}'")

    def descriptor_dim(self, embed_dim: int) -> int:
        """Width of the encoded "frames" (what VFAM fuses its context into)."""
        return embed_dim * self.patch_pool ** 2 if self.frame_feature == "patch_map" else embed_dim

    def input_dim(self, embed_dim: int) -> int:
        """Width of `add_motion`'s output: the temporal transformer's input before any projection."""
        return self.descriptor_dim(embed_dim) * (2 if self.motion == "difference" else 1)

    def add_motion(self, frames: Tensor) -> Tensor:
        """[B,T,F] descriptors -> [B,T,2F] with each one's change to the next frame (motion difference); else as
        they are."""
        return with_motion(frames) if self.motion == "difference" else frames

    def encode(self, backbone: CLIPBackbone, vfam: VFAM | None, videos: Tensor, boxes: Tensor | None,
               box_mask: Tensor | None) -> dict[str, Tensor]:
        """One backbone call over normalised videos [B,T,3,H,W]; every video is encoded on its own."""
        num_videos, num_frames = videos.shape[:2]
        if self.motion == "pixel_difference":
            videos = change_to_next(videos)
        dense = self.frame_feature == "patch_map" or self.keep_tokens
        if vfam is not None:
            out = vfam.encode(backbone, videos, boxes, box_mask, dense=dense)
            glob, tokens = out["global"].flatten(0, 1), out["tokens"].flatten(0, 1) if dense else None
        else:
            enc = backbone.encode_frames(videos.flatten(0, 1), dense=dense)
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
        if vfam is not None:
            feats.update(entity_feats=out["entity_feats"], entity_mask=out["entity_mask"],
                         entity_motion=out["entity_motion"])
        if vfam is not None or self.keep_tokens:
            feats["frame_global"] = glob.reshape(num_videos, num_frames, -1)  # [B, T, D] CLIP's embeddings
        if self.keep_tokens:
            feats["tokens"] = tokens.reshape(num_videos, num_frames, *tokens.shape[1:])
        return feats


# ---------------------------------------------------------------------------------------------- class text
class ClassTextSource:
    """Fixed class-text features: `template` filled with each class name through the frozen text encoder, held in
    the model's one class-text cache (shared with AMCAP, models/text_cache.py)."""

    KIND = "prompt"

    def __init__(self, template: str, cache: ClassTextCache | None = None):
        if "{}" not in template:
            raise ValueError(f"models/heads/parts.py: VIDEO.HEAD.PROMPT_TEMPLATE needs a '{{}}' for the class name, "
                             f"got '{template}'")
        self.template = template
        self.cache = ClassTextCache() if cache is None else cache

    def features(self, backbone: CLIPBackbone, names: list[str], device: torch.device) -> Tensor:
        """[N, D] text embeddings of the names (cached while the text tower is frozen)."""
        def encode(batch: list[str]) -> dict[str, Tensor]:
            return {"features": backbone.encode_text(backbone.tokenize([self.template.format(n) for n in batch]))}

        return self.cache.lookup(backbone, self.KIND, list(names), encode, device)["features"]


# ---------------------------------------------------------------------------------------------- matching, losses
@dataclass
class OTAMMatcher:
    """Query-to-prototype distance [Q, C]: OTAM over frame distances 1 - lineage cosine, in both directions unless
    `bidirectional` is False (CLIP-FSAR's SINGLE_DIRECT)."""
    otam_lambda: float = 0.5
    cosine_eps: float = 0.01
    bidirectional: bool = True

    def __call__(self, queries: Tensor, prototypes: Tensor) -> Tensor:  # [Q,T,d], [C,T,d]
        frame_dists = 1 - lineage_cosine(queries, prototypes, self.cosine_eps, "qtd,csd->qcts")  # [Q, C, Tq, Ts]
        return otam_distance(frame_dists, self.otam_lambda, bidirectional=self.bidirectional)


@dataclass
class VideoTextLoss:
    """CLIP-FSAR's video-text loss: weight * CE(scale * lineage cosine(video, class text)) over the split's
    classes, with the real (split) labels of supports and queries. `targets` (VIDEO_TEXT_TARGETS): what each video
    is pulled towards, its class's text (CLIP-FSAR) or a fixed orthogonal code per class (`class_codes`)."""
    weight: float = 1.0
    cosine_eps: float = 0.01
    targets: str = "class_text"

    def __post_init__(self) -> None:
        if self.targets not in VIDEO_TEXT_TARGETS:
            raise ValueError(f"models/heads/parts.py: TRAIN.VIDEO_TEXT_TARGETS must be one of {VIDEO_TEXT_TARGETS}, "
                             f"got '{self.targets}'")

    def __call__(self, scale: Tensor, video_text: Tensor, class_text: Tensor, real_labels: Tensor) -> Tensor:
        """video_text [V, D]; class_text [N, D] shared by all videos, or [V, N, D] per video."""
        if class_text.dim() == 2:
            cos = lineage_cosine(video_text, class_text, self.cosine_eps)  # [V, N]
        else:
            cos = lineage_cosine(video_text, class_text, self.cosine_eps, "nd,ncd->nc")
        return self.weight * F.cross_entropy(scale * cos, real_labels.long())


def class_codes(num_classes: int, dim: int, seed: int = 0) -> Tensor:
    """[N, D] fixed unit codes, one per class (TRAIN.VIDEO_TEXT_TARGETS orthogonal): orthonormal when N <= D,
    random unit vectors otherwise; the same on every process and run for the same (N, D, seed)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    if num_classes <= dim:
        codes = torch.linalg.qr(gaussian).Q.T  # [N, D] orthonormal rows
    else:
        codes = F.normalize(gaussian.T, dim=1)
    return codes.float().contiguous()


@dataclass
class TextEvalRule:
    """CLIP-FSAR's test-time EVAL_TEXT (text probabilities only) and COMBINE (text^c * visual^(1-c))."""
    eval_text: bool = False
    combine: bool = False
    text_coff: float = 0.9

    @property
    def active(self) -> bool:
        return self.eval_text or self.combine

    def __call__(self, scale: Tensor, dists: Tensor, query_text: Tensor, class_text: Tensor,
                 num_frames: int) -> Tensor:
        """dists [Q, WAY] OTAM distances, query_text [Q, D] mean video-text embedding, class_text [WAY, D]."""
        text_probs = F.softmax(scale * cosine_logits(query_text, class_text), dim=1)
        if self.eval_text:
            return text_probs
        visual_probs = F.softmax((num_frames - dists) / num_frames, dim=1)  # CLIP-FSAR's constant 8 is its frames
        return text_probs.pow(self.text_coff) * visual_probs.pow(1.0 - self.text_coff)
