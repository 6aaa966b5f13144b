"""Dynamic multi-modal context prompts (AMCAP step 7).

`PromptGenerator` turns learnable context vectors plus a video's selected regions and their aligned text tokens
into `n_ctx` context embeddings (cross-attention, context vectors as queries). `ClassText` holds what the frozen
text encoder gives for the episode's class names: the anchor text features, per-token features of the name, and
the placeholder prompt "X X ... X {name}." whose X positions `encode_prompts` replaces with generated context
(the CoOp recipe), so the text features stay differentiable in the context through the frozen encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

PLACEHOLDER = "X"


class PromptGenerator(nn.Module):
    """Learnable context vectors refined by cross-attention over selected regions and aligned text tokens."""

    def __init__(self, embed_dim: int, text_width: int, n_ctx: int = 4, num_heads: int = 4, ctx_std: float = 0.02):
        super().__init__()
        if n_ctx < 1:
            raise ValueError(f"models/amcap/prompts.py: AMCAP.N_CTX must be >= 1, got {n_ctx}")
        if text_width % num_heads:
            raise ValueError(f"models/amcap/prompts.py: AMCAP.NUM_HEADS {num_heads} must divide the text width "
                             f"{text_width}")
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(torch.randn(n_ctx, text_width) * ctx_std)  # CoOp's initialisation scale
        self.region_proj = nn.Linear(embed_dim, text_width)
        self.token_proj = nn.Linear(embed_dim, text_width)
        # Tells the attention which keys are regions and which are text tokens.
        self.kind_embed = nn.Parameter(torch.randn(2, text_width) * ctx_std)
        self.norm_query = nn.LayerNorm(text_width)
        self.norm_memory = nn.LayerNorm(text_width)
        self.attn = nn.MultiheadAttention(text_width, num_heads, batch_first=True)
        # The update starts at the scale of word embeddings (~0.02), so the first prompts stay in the text
        # encoder's input distribution; a zero init would leave the attention weights without gradient.
        nn.init.normal_(self.attn.out_proj.weight, std=ctx_std / text_width ** 0.5)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, regions: Tensor, tokens: Tensor, valid: Tensor) -> Tensor:
        """regions [B, K, D], aligned tokens [B, K, D], valid [B, K] bool -> context embeddings [B, n_ctx, W]."""
        memory = torch.cat([self.region_proj(regions) + self.kind_embed[0],
                            self.token_proj(tokens) + self.kind_embed[1]], dim=1)  # [B, 2K, W]
        memory = self.norm_memory(memory)
        ignore = ~torch.cat([valid, valid], dim=1)
        ignore = ignore & ~ignore.all(dim=1, keepdim=True)  # never mask a whole row (softmax of nothing is NaN)
        query = self.norm_query(self.ctx).expand(regions.shape[0], -1, -1)
        update, _ = self.attn(query, memory, memory, key_padding_mask=ignore, need_weights=False)
        return self.ctx + update


@dataclass
class ClassText:
    """Frozen-encoder text of the episode's classes (C = way)."""

    features: Tensor  # [C, D] text of TEXT_TEMPLATE (the Shapley anchors)
    token_features: Tensor  # [C, L, D] per-token features of the same text
    token_ids: Tensor  # [C, L] its token ids (for naming aligned tokens)
    name_mask: Tensor  # [C, L] bool: the class-name tokens regions may align to
    prompt_ids: Tensor  # [C, L] ids of "X X ... X {name}."
    prompt_embeds: Tensor  # [C, L, W] their token embeddings (X positions replaced by generated context)


def _num_tokens(backbone, text: str) -> int:
    """BPE tokens of `text` without start/end tokens (CLIP's tokenizer splits words and punctuation apart)."""
    text = text.strip()
    if not text:
        return 0
    ids = backbone.tokenize([text])[0]
    return int((ids != 0).sum()) - 2


def name_token_mask(backbone, token_ids: Tensor, template: str) -> Tensor:
    """[C, L] bool marking the class-name tokens of `template.format(name)` (all words if the split is unclear)."""
    if template.count("{}") != 1:
        raise ValueError(f"models/amcap/prompts.py: AMCAP.TEXT_TEMPLATE must contain one '{{}}', got '{template}'")
    prefix, suffix = template.split("{}")
    n_prefix, n_suffix = _num_tokens(backbone, prefix), _num_tokens(backbone, suffix)
    positions = torch.arange(token_ids.shape[1], device=token_ids.device)[None, :]
    eot = token_ids.argmax(dim=1, keepdim=True)  # CLIP's end token has the largest id
    words = (positions >= 1) & (positions < eot)
    name = words & (positions >= 1 + n_prefix) & (positions < eot - n_suffix)
    return torch.where(name.any(dim=1, keepdim=True), name, words)


def _placeholder_id(backbone) -> int:
    return int(backbone.tokenize([PLACEHOLDER])[0, 1])


TOKEN_FEATURES = ("contextual", "word")


def word_features(backbone, token_ids: Tensor, name_mask: Tensor, template: str) -> Tensor:
    """[n, D]: each class-name token (`token_ids` [C, L] where `name_mask`) encoded alone in `template`, pooled at
    the end token like any class text: in the joint space, where the per-token outputs of a class text are not."""
    base = backbone.tokenize([template.format(PLACEHOLDER)])[0]
    slot = int((base == _placeholder_id(backbone)).nonzero()[0])
    ids = base[None].repeat(int(name_mask.sum()), 1)
    ids[:, slot] = token_ids[name_mask]
    return backbone.encode_text(ids)


def build_class_text(backbone, class_names: list[str], template: str, n_ctx: int,
                     token_feature: str = "contextual") -> ClassText:
    """Encode the episode's class texts with the backbone's text tower (gradients as its weights allow).

    `token_feature` (AMCAP.TOKEN_FEATURE): the name tokens' features are the class text's per-token outputs
    ("contextual") or each name token's own text embedding ("word", `word_features`)."""
    if token_feature not in TOKEN_FEATURES:
        raise ValueError(f"models/amcap/prompts.py: AMCAP.TOKEN_FEATURE must be one of {TOKEN_FEATURES}, "
                         f"got '{token_feature}'")
    token_ids = backbone.tokenize([template.format(name) for name in class_names])
    features, token_features = backbone.encode_text_tokens(token_ids)
    name_mask = name_token_mask(backbone, token_ids, template)
    if token_feature == "word":
        token_features = token_features.clone()
        token_features[name_mask] = word_features(backbone, token_ids, name_mask, template).to(token_features.dtype)
    prompt_ids = backbone.tokenize([" ".join([PLACEHOLDER] * n_ctx) + f" {name}." for name in class_names])
    if not bool((prompt_ids[:, 1:1 + n_ctx] == _placeholder_id(backbone)).all()):
        raise ValueError("models/amcap/prompts.py: the tokenizer did not keep the context placeholders at "
                         f"positions 1..{n_ctx}; class names: {class_names}")
    return ClassText(features=features, token_features=token_features, token_ids=token_ids,
                     name_mask=name_mask, prompt_ids=prompt_ids,
                     prompt_embeds=backbone.token_embeddings(prompt_ids))


def encode_prompts(backbone, ctx: Tensor, prompt_ids: Tensor, prompt_embeds: Tensor) -> Tensor:
    """Context [B, n_ctx, W] into "[ctx...] {name}." prompts (ids [B, L], embeds [B, L, W]) -> text [B, D]."""
    n_ctx = ctx.shape[1]
    embeds = torch.cat([prompt_embeds[:, :1], ctx.to(prompt_embeds.dtype), prompt_embeds[:, 1 + n_ctx:]], dim=1)
    return backbone.encode_text_embeddings(embeds, prompt_ids)
