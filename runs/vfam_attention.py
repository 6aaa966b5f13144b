"""Where VFAM's frame attention goes on the synthetic world (`python runs/visualize.py vfam-stats`, which prints
what this computes): the attention mass each frame's global token gives the acting entity's track vs each
distractor's, with the ground-truth tracks as the entities, through a run's trained head (`--checkpoint`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datasets.tracks import boxes_at_frames, rank_tracks
from datasets.transforms import transform_boxes
from runs.amcap_regions import read_test_clip, read_world_catalogue, stats_videos, video_track_file
from utils.config import CfgNode
from utils.errors import ArgumentError
from utils.seeding import seed_everything

# Per video, each a mean over the frames where the actor and at least one distractor are in view.
VFAM_MEASURES = ("actor_mass", "distractor_mass", "actor_top", "top_chance")


def frame_measures(weights: np.ndarray, present: np.ndarray, actor_slots: list[int]) -> dict[str, float]:
    """weights [T, K] (attention per slot), present [T, K] bool, the actor's slots -> VFAM_MEASURES of one video
    (NaN where no frame shows the actor beside a distractor). distractor_mass is per distractor, so with two
    distractors an attention that ignores who acts gives actor_mass = distractor_mass."""
    rows = []
    is_actor = np.zeros(weights.shape[1], dtype=bool)
    is_actor[actor_slots] = True
    for w, p in zip(weights, present, strict=True):
        others = p & ~is_actor
        if not (p & is_actor).any() or not others.any():
            continue
        rows.append((w[is_actor & p].sum(), w[others].mean(), float(is_actor[int(np.argmax(np.where(p, w, -1)))]),
                     1.0 / p.sum()))
    if not rows:
        return {name: float("nan") for name in VFAM_MEASURES}
    return dict(zip(VFAM_MEASURES, (float(v) for v in np.mean(rows, axis=0)), strict=True))


@torch.no_grad()
def video_attention(model, cfg: CfgNode, entry, record: dict) -> dict[str, float]:
    """VFAM_MEASURES of one video of the split, as a test episode shows it (the loader's view and frames)."""
    clip = read_test_clip(cfg, entry)
    track_file = video_track_file(cfg, entry, clip.video)
    slots = cfg.VFAM.MAX_ENTITIES
    ranked = rank_tracks(track_file, slots)
    boxes, mask = boxes_at_frames(track_file, clip.indices, slots)
    boxes, mask = transform_boxes(boxes, mask, clip.video.size, clip.view)  # crop units, as the loader's
    vfam, device = model.vfam, model.backbone.device
    encoded = vfam.encode(model.backbone, clip.images[None].to(device), boxes[None].to(device), mask[None].to(device))
    weights = vfam.attention(encoded["global"], encoded["entity_feats"], encoded["entity_mask"],
                             encoded["entity_motion"])[0]
    actor = [k for k, track in enumerate(ranked) if track.label == record["actor"]]
    present = encoded["entity_mask"][0].bool().cpu().numpy()
    return frame_measures(weights.float().cpu().numpy(), present, actor)


def vfam_stats(cfg: CfgNode, split: str, videos_per_class: int, checkpoint: str = "") -> dict[str, Any]:
    """VFAM_MEASURES over the split's videos (mean ± 95% CI over videos) with the head of `cfg` and the weights of
    `checkpoint` (a run's; without one, the untrained head the config builds)."""
    from models import build_model
    from runs.test_net_few_shot import load_weights_for_test

    catalogue = read_world_catalogue(cfg.DATA.ANNO_DIR)
    class_names, entries = stats_videos(cfg, split, videos_per_class)
    seed_everything(cfg.RANDOM_SEED)
    model = build_model(cfg).eval()
    if checkpoint:
        load_weights_for_test(model, checkpoint)
    if getattr(model, "vfam", None) is None:
        raise ArgumentError("vfam-stats: the config builds no VFAM (set VFAM.ENABLE True)")
    rows = [video_attention(model, cfg, e, catalogue[class_names[e.class_id]]) for e in entries]
    out = {}
    for name in VFAM_MEASURES:
        values = np.array([r[name] for r in rows if not np.isnan(r[name])])
        ci = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else None
        out[name] = {"mean": float(values.mean()) if len(values) else None, "ci95": ci, "n": int(len(values))}
    gate = model.vfam.gate  # None under VFAM.FUSION replace (the context is the descriptor)
    return {"split": split, "videos": len(entries), "classes": class_names, "measures": out,
            "gate": None if gate is None else float(gate.detach().float().abs().mean())}
