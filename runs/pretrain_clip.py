"""Contrastive image-text pretraining of the tiny CLIP on the synthetic world's training vocabulary.

    python runs/pretrain_clip.py --out CKPT.pt [--classes N --seed K --frames F --size S --distractors D
        --videos-per-class M] [--steps T --batch-size B --lr LR --weight-decay WD --warmup-steps W
        --motion-captions P --pretrain-seed K --eval-scenes N --eval-episodes E]

The real regime in miniature: CLIP-FSAR starts from a CLIP whose class texts mean something. Here the tiny
open_clip model (FSAR-Tiny-ViT) learns that on single frames drawn on the fly from the world
(datasets/synthetic_world.py): still scenes captioned with what is where ("a big red circle at the top left and a
small striped green square at the bottom") and frames of *training* classes captioned with their action phrase.
No val/test phrase and no val/test video is ever seen. The loss is open_clip's own `ClipLoss`.

Written: CKPT.pt, a plain open_clip state dict (`VIDEO.HEAD.PRETRAINED CKPT.pt` loads it strictly), and CKPT.json,
the summary: steps, seconds, final loss, held-out image->text retrieval top-1 against chance, and the zero-shot
accuracy of class-text-only classification on 5-way episodes of the world's test classes (CLIP-FSAR's prompt,
query = mean of 8 frame embeddings) against chance. `ensure_pretrained(cfg)` builds it for a run (PRETRAIN.*).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Sequence

if __package__ in (None, ""):  # `python runs/pretrain_clip.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.optim.lr_scheduler import LambdaLR  # noqa: E402

from datasets.synthetic_world import (  # noqa: E402
    WorldClass,
    class_index,
    pretrain_scene,
    render_world_video,
    video_rng,
    world_catalogue,
)
from models.clip import CLIPBackbone  # noqa: E402
from utils.atomic import atomic_write, unwritable  # noqa: E402
from utils.cli import non_negative_int, positive_int  # noqa: E402
from utils.config import NON_NEGATIVE, POSITIVE, PROBABILITY, CfgNode, ConfigError, rules, section  # noqa: E402
from utils.errors import ArgumentError, entry_point  # noqa: E402
from utils.logger import get_logger  # noqa: E402
from utils.textfiles import read_text  # noqa: E402

logger = get_logger(__name__)

PROMPT_TEMPLATE = "a photo of {}"  # CLIP-FSAR's class-text prompt (VIDEO.HEAD.PROMPT_TEMPLATE's default)
EVAL_WAY, EVAL_QUERIES, EVAL_FRAMES = 5, 3, 8


def add_pretrain_config(cfg: CfgNode) -> None:
    _P = section(cfg, "PRETRAIN")
    _P.GENERATE = False  # build VIDEO.HEAD.PRETRAINED here when missing or built from other settings (SYNTHETIC world)
    _P.STEPS = 300  # optimiser steps (each a fresh batch of captioned frames)
    _P.BATCH_SIZE = 32  # image-text pairs per step (ClipLoss negatives)
    _P.LR = 1e-3  # AdamW peak learning rate (linear warmup, cosine decay to 0)
    _P.WEIGHT_DECAY = 0.05  # AdamW weight decay on weight matrices
    _P.WARMUP_STEPS = 10  # linear warmup steps
    _P.MOTION_CAPTIONS = 0.5  # fraction of frames taken from training-class videos, captioned with their action phrase
    _P.SEED = 0  # model init and scene stream seed
    _P.EVAL_SCENES = 200  # held-out scenes for image->text retrieval (chance 1/EVAL_SCENES)
    _P.EVAL_EPISODES = 200  # 5-way zero-shot episodes on the world's test classes
    rules("PRETRAIN", STEPS=POSITIVE, BATCH_SIZE=POSITIVE, LR=POSITIVE, WEIGHT_DECAY=NON_NEGATIVE,
          WARMUP_STEPS=NON_NEGATIVE, MOTION_CAPTIONS=PROBABILITY, SEED=NON_NEGATIVE, EVAL_SCENES=POSITIVE,
          EVAL_EPISODES=POSITIVE)


@dataclass(frozen=True)
class WorldArgs:
    """The world the frames come from (SYNTHETIC.*); the same arguments make_world writes the benchmark with."""

    classes: int = 30
    videos_per_class: int = 20
    frames: int = 16
    size: int = 64
    seed: int = 0
    distractors: int = 2


@dataclass(frozen=True)
class PretrainArgs:
    backbone: str = "FSAR-Tiny-ViT"
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10
    motion_captions: float = 0.5
    seed: int = 0
    eval_scenes: int = 200
    eval_episodes: int = 200


def cache_key(world: WorldArgs, args: PretrainArgs) -> str:
    """What the checkpoint is a function of; a changed setting rebuilds instead of reusing a stale file."""
    text = json.dumps({"world": asdict(world), "pretrain": asdict(args)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def summary_path(checkpoint: str) -> str:
    return os.path.splitext(checkpoint)[0] + ".json"


# ---------------------------------------------------------------------------------------------------------------
# Data: captioned frames drawn on the fly.


def scene_batch(train: list[WorldClass], world: WorldArgs, n: int, rng: np.random.Generator,
                motion_prob: float) -> tuple[np.ndarray, list[str]]:
    """uint8 [n, S, S, 3] frames and their captions."""
    pairs = [pretrain_scene(train, world.size, world.frames, rng, motion_prob) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def to_input(frames: np.ndarray, backbone: CLIPBackbone) -> Tensor:
    """uint8 [N, S, S, 3] -> normalised float [N, 3, S, S] (the dataset's CLIP mean/std)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(backbone.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def embed_images(backbone: CLIPBackbone, frames: np.ndarray, chunk: int = 256) -> Tensor:
    """[N, D] unit-norm image embeddings."""
    out = [backbone.encode_frames(to_input(frames[i:i + chunk], backbone))["global"] for i in
           range(0, len(frames), chunk)]
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def embed_texts(backbone: CLIPBackbone, texts: list[str]) -> Tensor:
    """[N, D] unit-norm text embeddings."""
    return torch.nn.functional.normalize(backbone.encode_text(backbone.tokenize(texts)), dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# Training and evaluation.


def build_backbone(args: PretrainArgs) -> CLIPBackbone:
    """Random-init tiny CLIP with both towers and CLIP's logit scale trainable."""
    torch.manual_seed(args.seed)
    backbone = CLIPBackbone(args.backbone, pretrained="", train_text=True)
    backbone.model.logit_scale.requires_grad_(True)
    return backbone


def _optimizer(backbone: CLIPBackbone, args: PretrainArgs) -> tuple[torch.optim.Optimizer, LambdaLR]:
    params = [p for p in backbone.parameters() if p.requires_grad]
    # open_clip's rule: no decay on gains, biases, embeddings of rank < 2 and the logit scale.
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def factor(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(args.steps - args.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return opt, LambdaLR(opt, factor)


def train_clip(backbone: CLIPBackbone, train: list[WorldClass], world: WorldArgs, args: PretrainArgs) -> list[float]:
    """The contrastive loop; returns the loss per step."""
    rng = np.random.default_rng([args.seed, world.seed, 1])
    opt, sched = _optimizer(backbone, args)
    loss_fn = open_clip.ClipLoss()
    model = backbone.model
    backbone.train()
    losses = []
    for step in range(args.steps):
        frames, captions = scene_batch(train, world, args.batch_size, rng, args.motion_captions)
        image = torch.nn.functional.normalize(backbone.encode_frames(to_input(frames, backbone))["global"], dim=-1)
        text = torch.nn.functional.normalize(backbone.encode_text(backbone.tokenize(captions)), dim=-1)
        loss = loss_fn(image, text, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # open_clip clamps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if step % 25 == 0 or step == args.steps - 1:
            logger.info("pretrain step %d/%d loss %.3f", step + 1, args.steps, losses[-1])
    backbone.eval()
    return losses


@torch.no_grad()
def retrieval_top1(backbone: CLIPBackbone, train: list[WorldClass], world: WorldArgs, args: PretrainArgs) -> float:
    """Held-out scenes (their own seed stream): how often an image's nearest caption among all N is its own."""
    rng = np.random.default_rng([args.seed, world.seed, 2])
    frames, captions = scene_batch(train, world, args.eval_scenes, rng, args.motion_captions)
    best = (embed_images(backbone, frames) @ embed_texts(backbone, captions).T).argmax(dim=1)
    return float(np.mean([captions[int(j)] == captions[i] for i, j in enumerate(best)]))


@torch.no_grad()
def test_video_embeddings(backbone: CLIPBackbone, splits: dict[str, list[WorldClass]], world: WorldArgs) -> Tensor:
    """[C, V, D] per test class and video: the mean of 8 segment-centre frame embeddings, unit norm. The videos are
    the ones make_world writes (same generator), before mp4 encoding."""
    index = class_index(splits)
    picks = ((np.arange(EVAL_FRAMES) + 0.5) * world.frames / EVAL_FRAMES).astype(int)
    out = []
    for cls in splits["test"]:
        videos = [render_world_video(cls, world.frames, world.size, world.distractors,
                                     video_rng(world.seed, index[cls.name], k))[0][picks]
                  for k in range(world.videos_per_class)]
        frames = embed_images(backbone, np.concatenate(videos)).view(len(videos), EVAL_FRAMES, -1)
        out.append(torch.nn.functional.normalize(frames.mean(dim=1), dim=-1))
    return torch.stack(out)


@torch.no_grad()
def zero_shot_accuracy(backbone: CLIPBackbone, splits: dict[str, list[WorldClass]], world: WorldArgs,
                       args: PretrainArgs) -> float:
    """Class-text-only 5-way episodes on the test classes (what CLIP-FSAR's EVAL_TEXT scores)."""
    test = splits["test"]
    if len(test) < EVAL_WAY:
        raise ValueError(f"pretrain_clip: zero-shot episodes need {EVAL_WAY} test classes, the world has {len(test)}")
    videos = test_video_embeddings(backbone, splits, world)  # [C, V, D]
    texts = embed_texts(backbone, [PROMPT_TEMPLATE.format(c.name) for c in test])  # [C, D]
    rng = np.random.default_rng([args.seed, world.seed, 3])
    correct = total = 0
    for _ in range(args.eval_episodes):
        way = rng.choice(len(test), EVAL_WAY, replace=False)
        for label, c in enumerate(way):
            queries = videos[c, rng.choice(videos.shape[1], min(EVAL_QUERIES, videos.shape[1]), replace=False)]
            predicted = (queries @ texts[way].T).argmax(dim=1)  # [Q]
            correct += int((predicted == label).sum())
            total += len(queries)
    return correct / total


def save_checkpoint(backbone: CLIPBackbone, path: str) -> None:
    """A plain open_clip state dict, written atomically (what open_clip.load_checkpoint(strict=True) reads)."""
    buffer = io.BytesIO()
    torch.save(backbone.model.state_dict(), buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def train_and_evaluate(world: WorldArgs, args: PretrainArgs) -> tuple[CLIPBackbone, dict]:
    """Pretrain and evaluate (nothing written); returns the model and its summary."""
    start = time.time()
    splits = world_catalogue(world.classes, world.seed)
    backbone = build_backbone(args)
    losses = train_clip(backbone, splits["train"], world, args)
    summary = {"key": cache_key(world, args), "world": asdict(world), "pretrain": asdict(args), "steps": args.steps,
               "train_seconds": round(time.time() - start, 1), "first_loss": round(losses[0], 4),
               "final_loss": round(float(np.mean(losses[-10:])), 4),
               "retrieval_top1": retrieval_top1(backbone, splits["train"], world, args),
               "retrieval_chance": 1.0 / args.eval_scenes,
               "zero_shot_accuracy": zero_shot_accuracy(backbone, splits, world, args),
               "zero_shot_chance": 1.0 / EVAL_WAY, "test_classes": [c.name for c in splits["test"]]}
    summary["seconds"] = round(time.time() - start, 1)
    return backbone, summary


def write_pretrained(backbone: CLIPBackbone, summary: dict, out: str) -> None:
    """The checkpoint, then its summary JSON beside it (the summary's key marks the checkpoint complete)."""
    save_checkpoint(backbone, out)
    summary = {**summary, "checkpoint": os.path.abspath(out), "sha256": file_sha256(out)}
    atomic_write(summary_path(out), lambda f: json.dump(summary, f, indent=2), binary=False)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stale_reason(path: str, key: str) -> str:
    """Why the cached checkpoint `path` cannot be reused for settings `key` ('' when it can): the cache is keyed by
    the settings and by the file's own digest, so a file replaced or damaged after it was written is not used."""
    record = summary_path(path)
    if not os.path.isfile(path):
        return "no such file"
    if not os.path.isfile(record):
        return f"no summary {record} beside it"
    try:
        summary = json.loads(read_text(record, "pretraining summary", ConfigError))
    except (ValueError, ConfigError) as e:
        return f"its summary {record} is not readable JSON ({str(e).splitlines()[0]})"
    if not isinstance(summary, dict) or summary.get("key") != key:
        return "it was pretrained with other settings"
    if "sha256" not in summary:
        return f"its summary {record} records no sha256 of it (written by an older version)"
    if file_sha256(path) != summary["sha256"]:
        return (f"its sha256 differs from the one {record} recorded when it was written (the file was replaced or "
                f"damaged)")
    return ""


def pretrain(world: WorldArgs, args: PretrainArgs, out: str) -> dict:
    """Pretrain, evaluate, write the checkpoint and its summary JSON; returns the summary."""
    backbone, summary = train_and_evaluate(world, args)
    write_pretrained(backbone, summary, out)
    logger.info("pretrained %s: %s", out, {k: summary[k] for k in ("final_loss", "retrieval_top1",
                                                                   "zero_shot_accuracy", "seconds")})
    return summary


def args_from_config(cfg: CfgNode) -> tuple[WorldArgs, PretrainArgs]:
    syn, pre = cfg.SYNTHETIC, cfg.PRETRAIN
    world = WorldArgs(classes=syn.CLASSES, videos_per_class=syn.VIDEOS_PER_CLASS, frames=syn.FRAMES, size=syn.SIZE,
                      seed=syn.SEED, distractors=syn.DISTRACTORS)
    args = PretrainArgs(backbone=cfg.VIDEO.HEAD.BACKBONE_NAME, steps=pre.STEPS, batch_size=pre.BATCH_SIZE,
                        lr=float(pre.LR), weight_decay=float(pre.WEIGHT_DECAY), warmup_steps=pre.WARMUP_STEPS,
                        motion_captions=float(pre.MOTION_CAPTIONS), seed=pre.SEED, eval_scenes=pre.EVAL_SCENES,
                        eval_episodes=pre.EVAL_EPISODES)
    return world, args


def pretrain_reason(cfg: CfgNode) -> str:
    """Why PRETRAIN.GENERATE must (re)build VIDEO.HEAD.PRETRAINED now ('' when it need not, or without it)."""
    path = cfg.VIDEO.HEAD.PRETRAINED
    if not cfg.PRETRAIN.GENERATE:
        return ""
    if path in ("", "openai"):
        raise ConfigError(f"PRETRAIN.GENERATE writes the checkpoint VIDEO.HEAD.PRETRAINED: set it to a file path, "
                          f"got '{path}'")
    if cfg.SYNTHETIC.KIND != "world":
        raise ConfigError(f"PRETRAIN.GENERATE pretrains on the synthetic world: set SYNTHETIC.KIND world, got "
                          f"'{cfg.SYNTHETIC.KIND}'")
    return stale_reason(path, cache_key(*args_from_config(cfg)))


def check_pretrain_writable(cfg: CfgNode) -> str:
    """Before anything is generated or pretrained: the folder PRETRAIN.GENERATE must write the checkpoint into is one
    this user can write (pretraining takes minutes; it used to fail only when saving); returns `pretrain_reason`."""
    reason = pretrain_reason(cfg)
    path = cfg.VIDEO.HEAD.PRETRAINED
    folder = os.path.dirname(os.path.abspath(path))
    problem = unwritable(folder) if reason else ""
    if problem:
        raise ConfigError(f"{path}: PRETRAIN.GENERATE must write VIDEO.HEAD.PRETRAINED ({reason}), but its folder "
                          f"{folder} {problem} (make it writable, or set VIDEO.HEAD.PRETRAINED to a file in a "
                          f"writable folder)")
    return reason


def ensure_pretrained(cfg: CfgNode) -> str:
    """With PRETRAIN.GENERATE, (re)build VIDEO.HEAD.PRETRAINED unless it exists from the same settings; returns the
    checkpoint path the model will load. Call on rank 0 before the model is built."""
    path = cfg.VIDEO.HEAD.PRETRAINED
    reason = check_pretrain_writable(cfg)
    if not reason:
        return path
    world, args = args_from_config(cfg)
    if os.path.isfile(path):
        logger.warning("%s: %s: rebuilding it (PRETRAIN.GENERATE)", path, reason)
    logger.info("pretraining the tiny CLIP into %s (%d steps x %d pairs)", path, args.steps, args.batch_size)
    pretrain(world, args, path)
    return path


def _parser() -> argparse.ArgumentParser:
    world, pre = WorldArgs(), PretrainArgs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="checkpoint to write (CKPT.pt; the summary goes to CKPT.json)")
    parser.add_argument("--backbone", default=pre.backbone, help="open_clip model name")
    for name in ("classes", "videos_per_class", "frames", "size"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=positive_int, default=getattr(world, name),
                            help="world argument (as make_synthetic --kind world)")
    parser.add_argument("--seed", type=non_negative_int, default=world.seed, help="world seed")
    parser.add_argument("--distractors", type=non_negative_int, default=world.distractors)
    for name in ("steps", "batch_size", "eval_scenes", "eval_episodes"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=positive_int, default=getattr(pre, name))
    parser.add_argument("--warmup-steps", type=non_negative_int, default=pre.warmup_steps)
    parser.add_argument("--lr", type=float, default=pre.lr)
    parser.add_argument("--weight-decay", type=float, default=pre.weight_decay)
    parser.add_argument("--motion-captions", type=float, default=pre.motion_captions,
                        help="fraction of training-class frames captioned with their action phrase")
    parser.add_argument("--pretrain-seed", type=non_negative_int, default=pre.seed, help="model init and data seed")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.lr <= 0 or a.weight_decay < 0 or not 0 <= a.motion_captions <= 1:
        raise ArgumentError(f"pretrain_clip: need --lr > 0, --weight-decay >= 0, --motion-captions in [0, 1]; got "
                            f"{a.lr}, {a.weight_decay}, {a.motion_captions}")
    world = WorldArgs(a.classes, a.videos_per_class, a.frames, a.size, a.seed, a.distractors)
    args = PretrainArgs(a.backbone, a.steps, a.batch_size, a.lr, a.weight_decay, a.warmup_steps, a.motion_captions,
                        a.pretrain_seed, a.eval_scenes, a.eval_episodes)
    try:
        s = pretrain(world, args, a.out)
    except ValueError as e:
        raise ArgumentError(f"pretrain_clip: {e}") from None
    print(f"pretrained {a.backbone} for {s['steps']} steps in {s['train_seconds']} s: loss {s['first_loss']} -> "
          f"{s['final_loss']}, held-out retrieval top-1 {s['retrieval_top1']:.3f} "
          f"(chance {s['retrieval_chance']:.3f}), "
          f"zero-shot {EVAL_WAY}-way test accuracy {s['zero_shot_accuracy']:.3f} (chance {s['zero_shot_chance']:.2f}); "
          f"wrote {os.path.abspath(a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
