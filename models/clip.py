"""CLIP backbone on open_clip: per-frame embeddings, dense joint-space patch tokens, and the text encoder.

The wrapper hides open_clip's tower layout from the heads: `encode_frames` gives the global image embedding and,
in the same pass, the patch-token map projected into the joint image-text space (ViT: tokens through `ln_post`
and `proj`; RN50: the attention pool's value path applied to every grid cell). The text side takes token ids or
prompt token *embeddings* (learned prompts), always with gradients flowing through the (possibly frozen) weights.
"""
from __future__ import annotations

import logging
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import load_state_dict
from open_clip.model import resize_pos_embed
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer, text_global_pool
from open_clip.utils import freeze_batch_norm_2d
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from utils.checkpoint import CheckpointError
from utils.config import NON_NEGATIVE, PATH, CfgNode, ConfigError, one_of, rules, section
from utils.logger import get_logger
from utils.pixels import normalise

logger = get_logger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
# Shipped architectures (FSAR-Tiny-ViT) become ordinary open_clip names.
open_clip.add_model_config(MODEL_CONFIG_DIR)

FINETUNE_POLICIES = ("full", "frozen", "last_n")
DENSE_TOKENS = ("output", "value")
# Keys that only OpenAI's released checkpoints carry (TorchScript attributes saved into the state dict).
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def add_clip_backbone_config(cfg: CfgNode) -> None:
    _H = section(section(cfg, "VIDEO"), "HEAD")
    # open_clip model name, CLIP-FSAR's RN50 / ViT-B/16, FSAR-Tiny-ViT (shipped), or torchvision's resnet18 /
    # resnet34 / resnet50 (the lineage's CNN heads' backbones, models/resnet.py; models/backbones.py picks)
    _H.BACKBONE_NAME = "ViT-B/16"
    # "openai" (open_clip downloads OpenAI's weights, or finds them in its cache), a local checkpoint file (OpenAI's
    # released RN50.pt / ViT-B-16.pt, as CLIP-FSAR users have them, or an open_clip state dict), or "" for random
    # init; checked at start-up (models/backbones.py:check_pretrained). ResNets: "imagenet" (torchvision's ImageNet
    # weights, the lineage's pretrained=True), a local torchvision state-dict file, or "".
    _H.PRETRAINED = "openai"
    _H.FINETUNE = "full"  # image tower policy: full (CLIP-FSAR), frozen, or last_n
    _H.FINETUNE_LAST_N = 0  # with FINETUNE last_n: number of trainable last blocks (ViT blocks / RN bottlenecks)
    _H.TRAIN_TEXT_ENCODER = False  # train the text tower too (CLIP-FSAR keeps it frozen; disables the text cache)
    # Dense patch tokens (AMCAP's regions, VFAM's RoI entities; CLIP-FSAR reads none). output: the last block's
    # patch tokens through ln_post/proj, which CLIP never aligned with text; value: the last attention block's value
    # path (ln_1, value projection, out_proj; no attention mixing, residual or MLP, as MaskCLIP/ClearCLIP) through
    # ln_post/proj, far better aligned (docs/world.md). ResNet towers use their attention pool's value
    # path either way.
    _H.DENSE_TOKENS = "output"
    _T = section(cfg, "TRAIN")
    _T.GRAD_CHECKPOINT = False  # activation checkpointing of the CLIP image blocks (less memory, ~30% more time)
    rules("VIDEO.HEAD", PRETRAINED=PATH, FINETUNE=one_of("full", "frozen", "last_n"), FINETUNE_LAST_N=NON_NEGATIVE,
          DENSE_TOKENS=one_of(*DENSE_TOKENS))


def open_clip_name(name: str) -> str:
    """CLIP-FSAR / OpenAI spellings ("ViT-B/16") to open_clip's ("ViT-B-16"); other names pass through."""
    return name.replace("/", "-")


def _is_torchscript(path: str) -> bool:
    """TorchScript archives (OpenAI's released .pt files) are zip files with a code/ folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def _read_local_checkpoint(path: str) -> tuple[dict[str, Tensor] | None, bool]:
    """Return (state dict, is_openai_format); the state dict is None for open_clip files (open_clip loads them)."""
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but OpenAI ships it
            return dict(torch.jit.load(path, map_location="cpu").state_dict()), True
    state = load_state_dict(path)  # unwraps {"state_dict": ...} and "module." prefixes
    if any(key in state for key in _OPENAI_EXTRA_KEYS):
        return state, True
    return None, False


# What torch.load, torch.jit.load and open_clip raise for a file that is no checkpoint of theirs.
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, KeyError, AttributeError,
               IndexError, zipfile.BadZipFile)
_PRETRAINED_HINT = "give an open_clip state dict, OpenAI's TorchScript .pt, or '' for random weights"


def _read_pretrained(path: str) -> tuple[dict[str, Tensor] | None, bool]:
    """`_read_local_checkpoint`, with any file it cannot read a one-line CheckpointError (pickled code never runs:
    state dicts are read with weights_only)."""
    try:
        return _read_local_checkpoint(path)
    except _UNREADABLE as e:
        why = ("it holds pickled Python objects, which are never unpickled" if isinstance(e, pickle.UnpicklingError)
               else _first_line(e))
        raise CheckpointError(f"VIDEO.HEAD.PRETRAINED {path}: not a CLIP checkpoint this code can read ({why}) "
                              f"({_PRETRAINED_HINT})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def openai_weights(name: str) -> str:
    """The local file of OpenAI's weights for BACKBONE_NAME `name`, downloaded by open_clip unless cached; a one-line
    ConfigError where there are none or they cannot be fetched (offline)."""
    oc_name = open_clip_name(name)
    released = open_clip.get_pretrained_cfg(oc_name, "openai")
    if not released:
        raise ConfigError(f"VIDEO.HEAD.PRETRAINED openai: OpenAI released no weights for VIDEO.HEAD.BACKBONE_NAME "
                          f"{name} (give a local checkpoint file, or '' for random weights)")
    try:
        return open_clip.download_pretrained(released)
    except (OSError, RuntimeError, ValueError) as e:  # huggingface_hub / urllib errors, wrapped by open_clip
        file = os.path.basename(released.get("url", "")) or f"{oc_name}.pt"
        raise ConfigError(f"VIDEO.HEAD.PRETRAINED openai: OpenAI's {name} weights are not cached here and could not "
                          f"be downloaded ({_first_line(e)}) (offline: copy OpenAI's {file} here and set "
                          f"VIDEO.HEAD.PRETRAINED to its path)") from None


def check_pretrained(name: str, pretrained: str) -> None:
    """Start-up check of VIDEO.HEAD.PRETRAINED: weights this machine can load (fetches 'openai' into the cache)."""
    if pretrained == "openai":
        openai_weights(name)
    elif pretrained and not os.path.isfile(os.path.expanduser(pretrained)):
        raise ConfigError(f"VIDEO.HEAD.PRETRAINED {pretrained!r}: no such file (give a local checkpoint such as "
                          f"OpenAI's RN50.pt or ViT-B-16.pt, 'openai' to download, or '' for random weights)")


class _DropRandomInitWarning(logging.Filter):
    """open_clip's "No pretrained weights loaded ... Model initialized randomly" (a root-logger warning from
    `create_model(pretrained=None)`): false where our own loader loads the weights next, and said in our own words
    (naming the key) where the model does stay random."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


def _create_unloaded(oc_name: str, **kwargs: Any) -> nn.Module:
    """open_clip's model with its initial weights, without open_clip's random-init warning (the caller says what
    the weights are)."""
    root, quiet = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(quiet)  # open_clip logs through the root logger itself, so a logger filter sees its records
    try:
        return open_clip.create_model(oc_name, pretrained=None, **kwargs)
    finally:
        root.removeFilter(quiet)


def _create_model(name: str, pretrained: str) -> nn.Module:
    oc_name = open_clip_name(name)
    if oc_name not in open_clip.list_models():
        raise ValueError(f"models/clip.py: VIDEO.HEAD.BACKBONE_NAME '{name}' is not an open_clip model; "
                         f"known: {', '.join(open_clip.list_models())}")
    if pretrained == "":
        # DEBUG: tools build the model with PRETRAINED "" and then load a run's checkpoint into it.
        logger.debug("%s starts from random weights (VIDEO.HEAD.PRETRAINED '')", oc_name)
        return _create_unloaded(oc_name)
    check_pretrained(name, pretrained)  # one line, not open_clip's traceback, where the weights are not here
    if pretrained == "openai":
        # OpenAI weights were trained with QuickGELU; open_clip's plain names default to nn.GELU.
        return open_clip.create_model(oc_name, pretrained="openai", force_quick_gelu=True)
    path = os.path.expanduser(pretrained)
    state, is_openai = _read_pretrained(path)
    model = _create_unloaded(oc_name, force_quick_gelu=is_openai)  # the weights are loaded below
    if not is_openai:
        try:
            open_clip.load_checkpoint(model, path, strict=True)
        except _UNREADABLE as e:  # strict loading: the key or shape diff
            raise CheckpointError(f"VIDEO.HEAD.PRETRAINED {path}: does not fit {oc_name} ({_first_line(e)}) (build "
                                  f"with the VIDEO.HEAD.BACKBONE_NAME it was trained as, or {_PRETRAINED_HINT})"
                                  ) from None
        logger.info("loaded CLIP weights from %s", path)
        return model
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    # TorchScript archives also store non-persistent buffers (e.g. the causal mask); the model rebuilds those.
    transient = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    state = {k: v for k, v in state.items() if k not in transient}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"VIDEO.HEAD.PRETRAINED {path}: does not fit {oc_name} (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}) (build with the VIDEO.HEAD.BACKBONE_NAME it was "
                              f"trained as)")
    resize_pos_embed(state, model)
    other = [k for k in expected if k != "visual.positional_embedding" and state[k].shape != expected[k].shape]
    if other:  # the same names, another width or patch size (ViT-B-32.pt under ViT-B/16)
        raise CheckpointError(f"VIDEO.HEAD.PRETRAINED {path}: does not fit {oc_name} (size mismatch for {other[0]}: "
                              f"{list(state[other[0]].shape)} in the file, {list(expected[other[0]].shape)} in the "
                              f"model) (build with the VIDEO.HEAD.BACKBONE_NAME it was trained as)")
    model.load_state_dict(state)
    logger.info("loaded OpenAI-format CLIP weights from %s (QuickGELU)", path)
    return model


class CLIPBackbone(nn.Module):
    """open_clip CLIP model with the frame/text encoders the FSAR heads need."""

    def __init__(self, name: str, pretrained: str = "", finetune: str = "full", finetune_last_n: int = 0,
                 grad_checkpoint: bool = False, train_text: bool = False, dense_tokens: str = "output"):
        super().__init__()
        if finetune not in FINETUNE_POLICIES:
            raise ValueError(f"models/clip.py: VIDEO.HEAD.FINETUNE must be one of {FINETUNE_POLICIES}, "
                             f"got '{finetune}'")
        if dense_tokens not in DENSE_TOKENS:
            raise ValueError(f"models/clip.py: VIDEO.HEAD.DENSE_TOKENS must be one of {DENSE_TOKENS}, "
                             f"got '{dense_tokens}'")
        self.dense_tokens = dense_tokens
        self.name = name
        self.model = _create_model(name, pretrained)
        if not isinstance(self.model, open_clip.CLIP):
            raise ValueError(f"models/clip.py: {name} builds a {type(self.model).__name__}; only open_clip.CLIP "
                             f"models (built-in text transformer) are supported")
        visual = self.model.visual
        if isinstance(visual, VisionTransformer):
            if visual.attn_pool is not None or not isinstance(visual.patch_dropout, nn.Identity):
                raise ValueError(f"models/clip.py: {name}: attentional pooling / patch dropout towers have no "
                                 f"dense patch grid")
            self.is_vit = True
            self.grid_size = tuple(visual.grid_size)
        elif isinstance(visual, ModifiedResNet):
            self.is_vit = False
            side = visual.image_size // 32
            self.grid_size = (side, side)
        else:
            raise ValueError(f"models/clip.py: {name}: unsupported image tower {type(visual).__name__}")
        preprocess = open_clip.get_model_preprocess_cfg(self.model)
        size = preprocess["size"]
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.image_mean = tuple(float(v) for v in preprocess["mean"])
        self.image_std = tuple(float(v) for v in preprocess["std"])
        self.embed_dim = int(visual.output_dim)
        self.text_width = int(self.model.token_embedding.embedding_dim)
        self.context_length = int(self.model.context_length)
        self._tokenizer = open_clip.get_tokenizer(open_clip_name(name))
        self.finetune, self.finetune_last_n = finetune, finetune_last_n
        self.grad_checkpoint = grad_checkpoint
        self.train_text = train_text
        self._apply_finetune_policy()
        if grad_checkpoint:
            self.model.set_grad_checkpointing(True)  # ViT blocks (and text blocks); RN stages are done below

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        head = cfg.VIDEO.HEAD
        return dict(name=head.BACKBONE_NAME, pretrained=head.PRETRAINED, finetune=head.FINETUNE,
                    finetune_last_n=head.FINETUNE_LAST_N, grad_checkpoint=cfg.TRAIN.GRAD_CHECKPOINT,
                    train_text=head.TRAIN_TEXT_ENCODER, dense_tokens=head.DENSE_TOKENS)

    # ------------------------------------------------------------------ trainability
    def _visual_blocks(self) -> list[nn.Module]:
        visual = self.model.visual
        if self.is_vit:
            return list(visual.transformer.resblocks)
        return [block for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4) for block in layer]

    def _apply_finetune_policy(self) -> None:
        model, visual = self.model, self.model.visual
        for name, param in model.named_parameters():
            if not name.startswith("visual."):
                # Text tower as configured; CLIP's own logit scale/bias are unused (heads own their scales).
                param.requires_grad_(self.train_text and name not in ("logit_scale", "logit_bias"))
        if self.finetune == "full":
            return
        visual.requires_grad_(False)
        blocks = self._visual_blocks()
        if self.finetune == "last_n":
            if not 0 < self.finetune_last_n <= len(blocks):
                raise ValueError(f"models/clip.py: VIDEO.HEAD.FINETUNE_LAST_N must be in 1..{len(blocks)} for "
                                 f"{self.name}, got {self.finetune_last_n}")
            trainable = blocks[-self.finetune_last_n:]
            for block in trainable:
                block.requires_grad_(True)
            if self.is_vit:
                visual.ln_post.requires_grad_(True)
                visual.proj.requires_grad_(True)
            else:
                visual.attnpool.requires_grad_(True)
        else:
            trainable = []
        if not self.is_vit:
            # Frozen ResNet parts must not update BatchNorm statistics either.
            keep = {id(m) for block in trainable for m in block.modules()}
            names = {name for name, m in visual.named_modules()
                     if isinstance(m, nn.BatchNorm2d) and id(m) not in keep}
            freeze_batch_norm_2d(visual, module_match=names)

    @property
    def text_trainable(self) -> bool:
        """True when text features depend on trainable weights (callers must not cache them)."""
        return self.train_text

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    # ------------------------------------------------------------------ image side
    def normalise(self, videos: Tensor) -> Tensor:
        """The tower's input from an episode's videos [..., 3, H, W]: uint8 pixels (exact crops, which the loader
        hands over as bytes: 4x less to copy between processes and devices) are normalised here with the tower's
        image_mean / image_std, on the videos' device; float videos are already normalised (views that resample
        or colour-jitter are normalised by the loader, see datasets/transforms.py) and pass unchanged."""
        return normalise(videos, self.image_mean, self.image_std) if videos.dtype == torch.uint8 else videos

    def _run_stage(self, stage: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def encode_frames(self, images: Tensor, dense: bool = False) -> dict[str, Tensor]:
        """images [N,3,H,W] -> {"global": [N,D]} (+ "tokens": [N,h,w,D] joint-space patch tokens), one pass."""
        visual = self.model.visual
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"models/clip.py: {self.name} expects {self.image_size} images, got "
                             f"{tuple(images.shape[-2:])} (set the data crop size to the model's image size)")
        h, w = self.grid_size
        if self.is_vit:
            value_path = dense and self.dense_tokens == "value"
            last_input: list[Tensor] = []
            hook = visual.transformer.resblocks[-1].register_forward_pre_hook(
                lambda block, args: last_input.append(args[0])) if value_path else None
            try:
                x = visual.transformer(visual._embeds(images))  # [N, 1+h*w, width]
            finally:
                if hook is not None:
                    hook.remove()
            pooled, tokens = visual._pool(x)  # tokens went through ln_post unless it is applied after pooling
            out = {"global": pooled @ visual.proj}
            if value_path:
                tokens = visual.ln_post(self._value_path(last_input[0])[:, 1:])  # the patch tokens, not the class
            elif dense and visual.final_ln_after_pool:
                tokens = visual.ln_post(tokens)
            if dense:
                out["tokens"] = (tokens @ visual.proj).reshape(images.shape[0], h, w, -1)  # [N, h, w, D]
            return out
        x = images.to(visual.conv1.weight.dtype)
        for stage in (visual.stem, visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = self._run_stage(stage, x)  # [N, C, h, w] after layer4
        out = {"global": visual.attnpool(x)}
        if dense:
            pool = visual.attnpool
            grid = x.flatten(2).transpose(1, 2) + pool.positional_embedding[1:].to(x.dtype)  # [N, h*w, C]
            # Value path only: each cell attends to itself, which is what the pool's output is for one token.
            out["tokens"] = pool.c_proj(pool.v_proj(grid)).reshape(images.shape[0], h, w, -1)
        return out

    def encode_masked(self, images: Tensor, keep: Tensor) -> Tensor:
        """CLIP embeddings [N, D] of images [N,3,H,W] that see only the patches `keep` [N, h, w] (bool).

        ViT: the hidden patches are dropped (the class token and the visible patches, positions kept, go through
        the transformer alone); ResNet: their pixels are set to the normalised mean (0). AMCAP's masked regions."""
        visual = self.model.visual
        if keep.shape[1:] != self.grid_size:
            raise ValueError(f"models/clip.py: keep masks {tuple(keep.shape[1:])} do not match the patch grid "
                             f"{self.grid_size}")
        if not self.is_vit:
            scale = (images.shape[-2] // keep.shape[1], images.shape[-1] // keep.shape[2])
            pixels = keep.repeat_interleave(scale[0], 1).repeat_interleave(scale[1], 2)[:, None]
            return self.encode_frames(images * pixels.to(images.dtype))["global"]
        x = visual._embeds(images)  # [N, 1+h*w, width]
        keep = keep.flatten(1)
        counts = keep.sum(dim=1)
        out = x.new_empty(x.shape[0], self.embed_dim)
        for count in counts.unique().tolist():  # images with as many visible patches run as one batch
            rows = (counts == count).nonzero().flatten()
            patches = keep[rows].nonzero()[:, 1].reshape(len(rows), count) + 1  # positions after the class token
            seq = torch.cat([x[rows, :1], x[rows[:, None], patches]], dim=1)  # [G, 1+count, width]
            out[rows] = visual._pool(visual.transformer(seq))[0] @ visual.proj
        return out

    def _value_path(self, x: Tensor) -> Tensor:
        """The last ViT block's attention branch with every token attending only to itself: ln_1, the value
        projection, out_proj and the branch's layer scale ([N, L, width] block input -> [N, L, width])."""
        transformer = self.model.visual.transformer
        block = transformer.resblocks[-1]
        if not transformer.batch_first:
            x = x.transpose(0, 1)  # LND -> NLD
        attn = block.attn
        width = attn.embed_dim
        bias = None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width:]
        value = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:], bias)
        return block.ls_1(attn.out_proj(value))

    # ------------------------------------------------------------------ text side
    def tokenize(self, texts: list[str]) -> Tensor:
        """[B, L] long token ids on the module's device."""
        return self._tokenizer(list(texts)).to(self.device)

    def token_embeddings(self, token_ids: Tensor) -> Tensor:
        """[B, L] ids -> [B, L, text_width] token embeddings (no positional embedding yet)."""
        return self.model.token_embedding(token_ids)

    def _text_transformer(self, embeddings: Tensor, length: int | None = None) -> Tensor:
        """[B, L, W] embeddings -> [B, length or L, text_width] after the text transformer and ln_final."""
        model = self.model
        length = length or embeddings.shape[1]
        cast_dtype = model.transformer.get_cast_dtype()
        x = embeddings[:, :length].to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        mask = None if model.attn_mask is None else model.attn_mask[:length, :length]
        x = model.transformer(x, attn_mask=mask)
        return model.ln_final(x)

    def _pooled_length(self, token_ids: Tensor) -> int | None:
        """Positions up to the batch's last pooled (end-of-text) token. With CLIP's causal mask no later position
        reaches the pooled one, so the text tower may stop there (exact; prompts are far shorter than 77)."""
        model = self.model
        if model.attn_mask is None or model.text_pool_type not in ("argmax", "eos"):
            return None
        if model.text_pool_type == "argmax":
            last = token_ids.argmax(dim=-1)
        else:
            last = (token_ids == model.text_eos_id).int().argmax(dim=-1)
        return int(last.max()) + 1

    def _project_text(self, x: Tensor) -> Tensor:
        proj = self.model.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def _pool_text(self, x: Tensor, token_ids: Tensor) -> Tensor:
        model = self.model
        return text_global_pool(x, token_ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))

    def encode_text_embeddings(self, embeddings: Tensor, token_ids: Tensor) -> Tensor:
        """[B,L,W] prompt embeddings + [B,L] ids (for the EOT position) -> [B, D]; differentiable w.r.t. inputs."""
        length = self._pooled_length(token_ids)
        x = self._text_transformer(embeddings, length)
        return self._project_text(self._pool_text(x, token_ids[:, :x.shape[1]]))

    def encode_text(self, token_ids: Tensor) -> Tensor:
        """[B, L] ids -> [B, D] text embeddings (not normalised)."""
        return self.encode_text_embeddings(self.token_embeddings(token_ids), token_ids)

    def encode_text_tokens(self, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        """[B, L] ids -> ([B, D] pooled at EOT, [B, L, D] every token through ln_final and the projection)."""
        x = self._text_transformer(self.token_embeddings(token_ids))
        tokens = self._project_text(x)
        return self._pool_text(tokens, token_ids), tokens

    def forward(self, images: Tensor, dense: bool = False) -> dict[str, Tensor]:
        return self.encode_frames(images, dense=dense)
