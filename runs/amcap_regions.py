"""AMCAP's regions of one video as a test episode shows it to the model, and how often they land on the synthetic
world's acting entity (`python runs/visualize.py regions | region-stats`, which draw and print what this computes).

AMCAP's region steps (Shapley interactions, merging, scoring, salient selection, token alignment) have no learned
parameters: with a frozen image tower (the world demo) the backbone of VIDEO.HEAD.PRETRAINED is the trained model's.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datasets.few_shot import ViewedClip, test_clip
from datasets.splits import VideoEntry, load_split
from datasets.tracks import TrackFile, boxes_at_frames, check_track_matches, load_track_file, rank_tracks, track_path
from datasets.transforms import ViewParams, transform_boxes
from datasets.video import OpenedVideo
from models.amcap import AMCAP
from models.amcap.prompts import ClassText
from models.amcap.shapley import cell_index_map
from models.clip import CLIPBackbone
from utils.config import CfgNode
from utils.errors import ArgumentError
from utils.plots import unnormalise
from utils.seeding import seed_everything
from utils.textfiles import read_text

TOKENS_PER_REGION = 3  # aligned tokens listed beside each salient region


# ---------------------------------------------------------------------------------------------- one video
def read_test_clip(cfg: CfgNode, video: VideoEntry | str, num_frames: int = 0) -> ViewedClip:
    """One video as a test episode shows it to the model: the dataset's own reader, frame sampler and view
    (datasets/few_shot.py:test_clip); `num_frames` 0 = DATA.NUM_INPUT_FRAMES."""
    if isinstance(video, str) and not os.path.exists(video):
        raise ArgumentError(f"{video}: --video file not found")
    return test_clip(cfg, video, "test", num_frames)


def read_frames(cfg: CfgNode, path: str, num_frames: int) -> tuple[np.ndarray, torch.Tensor, list[int]]:
    """`read_test_clip`'s uint8 [T, crop, crop, 3] frames to draw, model input [T, 3, crop, crop] and frame indices."""
    clip = read_test_clip(cfg, path, num_frames)
    return unnormalise(clip.images[None], cfg.DATA.MEAN, cfg.DATA.STD)[0], clip.images, clip.indices


@dataclass
class RegionContext:
    """What every video's analysis shares: AMCAP built from the config (its region steps have no learned
    parameters) and the class texts of the episode's names, encoded once."""

    amcap: AMCAP
    text: ClassText  # the class texts of `class_names`
    class_names: list[str]
    backbone: CLIPBackbone  # the tower (AMCAP.REGION_FEATURE masked encodes parts of the key frames)


def region_context(cfg: CfgNode, backbone: CLIPBackbone, class_names: list[str]) -> RegionContext:
    amcap = AMCAP(**AMCAP.from_config(cfg, backbone.embed_dim, backbone.text_width)).to(backbone.device).eval()
    text = amcap.class_text(backbone, list(class_names))
    return RegionContext(amcap, text, list(class_names), backbone)


@torch.no_grad()
def encode_clip(backbone: CLIPBackbone, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """One backbone pass over a video's images [T, 3, H, W]: "tokens" [T, h, w, D], "global" [T, D] and the
    "images" themselves (AMCAP.REGION_FEATURE masked encodes parts of them)."""
    images = images.to(backbone.device)
    return {**backbone.encode_frames(images, dense=True), "images": images}


@torch.no_grad()
def analyse_encoded(context: RegionContext, encoded: dict[str, torch.Tensor],
                    label: int | None = None) -> dict[str, Any]:
    """AMCAP's regions of one encoded video: query side (label-free anchor, the anchor's best class) or, with
    `label`, support side (that class's text as anchor when AMCAP.SUPPORT_CLASS_ANCHOR, and that class's salient
    regions). `best_class` is the class whose salient regions are read."""
    amcap, text = context.amcap, context.text
    labels = None
    if label is not None and amcap.support_class_anchor:
        labels = torch.tensor([label], device=encoded["tokens"].device)
    tokens = amcap.video_tokens(encoded["tokens"][None], encoded["global"][None], encoded["images"][None])
    info = amcap.describe(tokens, text, labels, amcap.coalitions(None), context.backbone)
    class_weights = None if info["anchor_weights"] is None else info["anchor_weights"][0].mean(dim=0).cpu()
    best_class = int(class_weights.argmax()) if label is None else label
    key_frames = amcap.key_frame_indices(encoded["tokens"].shape[0]).tolist()
    # For comparison with the label-free anchor: the class text closest to CLIP's global embedding (frame mean).
    video = F.normalize(F.normalize(encoded["global"].float(), dim=-1).mean(dim=0), dim=0)
    global_best = int((F.normalize(text.features.float(), dim=-1) @ video).argmax())
    return {"info": info, "text": text, "best_class": best_class, "key_frames": key_frames,
            "class_weights": class_weights, "global_best_class": global_best,
            "best_patches": best_patches(context.backbone, encoded, key_frames, info["anchor"][0])}


def best_patches(backbone: CLIPBackbone, encoded: dict[str, torch.Tensor], key_frames: list[int],
                 anchor: torch.Tensor) -> dict[str, list[int]]:
    """Per key frame, the patch (flat index) closest to the anchor [K, D] by its dense token ("dense") and by CLIP's
    embedding of the frame with that patch alone visible ("masked", models/clip.py:encode_masked)."""
    anchor = F.normalize(anchor.float(), dim=-1)
    tokens = F.normalize(encoded["tokens"][key_frames].flatten(1, 2).float(), dim=-1)  # [K, h*w, D]
    dense = torch.einsum("kpd,kd->kp", tokens, anchor).argmax(dim=1)
    h, w = encoded["tokens"].shape[1:3]
    single = torch.eye(h * w, dtype=torch.bool, device=anchor.device).reshape(h * w, h, w)
    masked = []
    for k, frame in enumerate(key_frames):
        images = encoded["images"][frame][None].expand(h * w, -1, -1, -1)
        emb = F.normalize(backbone.encode_masked(images, single).float(), dim=-1)  # [h*w, D]
        masked.append(int((emb @ anchor[k]).argmax()))
    return {"dense": dense.tolist(), "masked": masked}


def analyse_video(cfg: CfgNode, backbone: CLIPBackbone, images: torch.Tensor, class_names: list[str],
                  label: int | None = None) -> dict[str, Any]:
    """`analyse_encoded` of one video's images [T, 3, H, W] against `class_names` (one picture's worth)."""
    return analyse_encoded(region_context(cfg, backbone, class_names), encode_clip(backbone, images), label)


def _decode_token(token_id: int) -> str:
    from open_clip.tokenizer import decode

    return decode(torch.tensor([token_id])).strip()


def salient_slots(analysis: dict[str, Any]) -> list[int]:
    """Region slots of the best class's valid salient regions, most salient first."""
    info, c = analysis["info"], analysis["best_class"]
    return [slot for slot, ok in zip(info["selected"][0, c].tolist(), info["selected_valid"][0, c].tolist(),
                                     strict=True) if ok]


def aligned_words(analysis: dict[str, Any], slot: int, k: int) -> list[tuple[str, float]]:
    """The `k` best-scored name tokens of the best class for region `slot`: (decoded word, score), best first."""
    info, text, c = analysis["info"], analysis["text"], analysis["best_class"]
    row = info["scores"][0, c, slot].masked_fill(~text.name_mask[c], float("-inf"))
    top = row.topk(min(k, int(text.name_mask[c].sum())))
    return [(_decode_token(int(text.token_ids[c, pos])), score)
            for score, pos in zip(top.values.tolist(), top.indices.tolist(), strict=True)]


def region_token_lines(analysis: dict[str, Any], class_names: list[str]) -> list[tuple[int, str]]:
    """(region slot, "S<k> ...: 'token' score, ...") for each salient region of the best class."""
    lines = []
    for k, slot in enumerate(salient_slots(analysis)):
        words = ", ".join(f"'{word}' {score:.2f}" for word, score in aligned_words(analysis, slot, TOKENS_PER_REGION))
        lines.append((slot, f"S{k + 1} (region {slot + 1}): {words}"))
    return lines


# ---------------------------------------------------------------------------------------------- region-stats
SETTINGS = ("query", "support")
# What is measured per (video, setting); each is a fraction in [0, 1], averaged over the videos where it is defined.
MEASURES = ("actor_hit", "actor_cover", "target_hit", "distractor_hit", "salient_area", "kept_hit", "kept_cover",
            "kept_area", "cover_chance", "area_chance", "token_names_actor", "token_names_actor_on_hit",
            "token_names_actor_on_miss", "token_names_verb", "token_chance_actor", "token_chance_verb",
            "anchor_correct", "global_anchor_correct", "patch_hit_dense", "patch_hit_masked")
# The table's rows and the measure (or number) each is compared with.
# A random set of cells covers on average the share of the actor that it covers of the grid (its area); regions
# partition the grid, so a random choice of as many kept regions as were selected covers `cover_chance`.
TABLE_ROWS = (("actor_hit", "kept_hit"), ("actor_cover", "cover_chance"), ("kept_hit", "area_chance"),
              ("kept_cover", "kept_area"), ("salient_area", ""), ("target_hit", ""), ("distractor_hit", ""),
              ("token_names_actor", "token_chance_actor"), ("token_names_actor_on_hit", "token_chance_actor"),
              ("token_names_actor_on_miss", "token_chance_actor"), ("token_names_verb", "token_chance_verb"),
              ("anchor_correct", "1/C"), ("global_anchor_correct", "1/C"), ("patch_hit_dense", "area_chance"),
              ("patch_hit_masked", "area_chance"))


def read_world_catalogue(anno_dir: str) -> dict[str, dict]:
    """Class name -> catalogue record (`actor`, `target`, `entities`) from the world's DATA.ANNO_DIR/meta.json."""
    path = os.path.join(anno_dir, "meta.json")
    if not os.path.isfile(path):
        raise ArgumentError(f"{path}: not found; region-stats needs the synthetic world's meta.json "
                            f"(datasets/synthetic_world.py) as ground truth, DATA.ANNO_DIR is not a world")
    try:
        meta = json.loads(read_text(path, "meta.json", ArgumentError))
    except json.JSONDecodeError as e:
        raise ArgumentError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    catalogue = meta.get("catalogue") if isinstance(meta, dict) else None
    if not isinstance(catalogue, list) or not catalogue:
        raise ArgumentError(f"{path}: has no 'catalogue'; region-stats needs a synthetic world "
                            f"(datasets/synthetic_world.py), not kind {meta.get('kind')!r}"
                            if isinstance(meta, dict) else f"{path}: has no 'catalogue' (top level is not an object)")
    for k, record in enumerate(catalogue):
        if not (isinstance(record, dict) and {"name", "actor", "entities"} <= set(record)):
            name = record.get("name") if isinstance(record, dict) else None
            raise ArgumentError(f"{path}: catalogue entry {k} ({name!r}) has no 'name', 'actor' or 'entities': not "
                                f"a synthetic world's catalogue (datasets/synthetic_world.py)")
    return {record["name"]: record for record in catalogue}


def box_token_cells(box: Sequence[float], h: int, w: int) -> np.ndarray:
    """[h, w] bool: the token cells whose centre lies inside `box` (x1, y1, x2, y2 in crop units 0..1)."""
    x1, y1, x2, y2 = box
    cy, cx = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    return ((cy >= y1) & (cy <= y2))[:, None] & ((cx >= x1) & (cx <= x2))[None, :]


def region_hits(masks: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Regions [R, h, w] that share a token cell with an entity's cells [K, h, w] on any key frame -> [R] bool."""
    return (masks & cells.any(axis=0)[None]).any(axis=(1, 2))


def cover_fraction(masks: np.ndarray, cells: np.ndarray) -> float:
    """Share of an entity's (key frame, cell) pairs [K, h, w] inside the union of regions [R, h, w]; NaN if none."""
    if not cells.any():
        return float("nan")
    union = masks.any(axis=0) if len(masks) else np.zeros(cells.shape[1:], dtype=bool)
    return float((cells & union[None]).sum() / cells.sum())


def entity_cells(track_file: TrackFile, frame_numbers: Sequence[int], view: ViewParams,
                 decoded_size: tuple[int, int], token_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Entity label -> its token cells [K, h, w] on the frames `frame_numbers`, mapped through the test view
    (squash or short side, centre crop) exactly as the loader maps track boxes for VFAM."""
    ranked = rank_tracks(track_file, len(track_file.tracks))
    boxes, mask = boxes_at_frames(track_file, frame_numbers, len(ranked))  # [K, E, 4] of the original frame
    boxes, mask = transform_boxes(boxes, mask, decoded_size, view)  # crop units
    empty = np.zeros((len(frame_numbers), *token_hw), dtype=bool)
    out: dict[str, np.ndarray] = {}
    for slot, track in enumerate(ranked):
        cells = np.stack([box_token_cells(boxes[k, slot].tolist(), *token_hw) if mask[k, slot] else empty[k]
                          for k in range(len(frame_numbers))])
        out[track.label] = out.get(track.label, empty) | cells
    return out


def word_kind(word: str, actor: dict, class_name: str, entity_words: set[str]) -> str:
    """"actor" (the actor's colour or shape word), "verb" (another word of the class name that is no entity's
    colour or shape) or "other"."""
    word = word.strip().lower()
    if word in (actor["colour"], actor["shape"]):
        return "actor"
    return "verb" if word in set(class_name.split()) - entity_words else "other"


def _fraction(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def setting_stats(analysis: dict[str, Any], cells: dict[str, np.ndarray], record: dict, entity_words: set[str],
                  true_class: int) -> tuple[dict[str, float], list[str]]:
    """One video, one setting: MEASURES (NaN where undefined) and the salient regions' top aligned words."""
    info, text, c, weights = analysis["info"], analysis["text"], analysis["best_class"], analysis["class_weights"]
    masks = info["regions"].token_masks[0].cpu().numpy()  # [R, h, w]
    kept = masks[info["regions"].valid[0].cpu().numpy()]
    salient = masks[salient_slots(analysis)]
    actor = cells[record["actor"]]
    target = cells.get(record.get("target") or "")
    others = [v for label, v in cells.items() if label not in (record["actor"], record.get("target"))]
    has_actor = bool(actor.any())
    actor_entity = next(e for e in record["entities"] if e["name"] == record["actor"])
    words = [aligned_words(analysis, slot, 1)[0][0] for slot in salient_slots(analysis)]
    kinds = [word_kind(w, actor_entity, record["name"], entity_words) for w in words]
    hits = region_hits(salient, actor) if has_actor else np.zeros(len(salient), dtype=bool)
    name_kinds = [word_kind(_decode_token(int(i)), actor_entity, record["name"], entity_words)
                  for i in text.token_ids[c][text.name_mask[c]].tolist()]
    nan = float("nan")
    stats = {
        "actor_hit": _fraction(hits) if has_actor else nan,
        "actor_cover": cover_fraction(salient, actor),
        "target_hit": _fraction(region_hits(salient, target)) if target is not None and target.any() else nan,
        "distractor_hit": _fraction(region_hits(salient, np.concatenate(others))) if others else nan,
        "salient_area": float(salient.any(axis=0).mean()) if len(salient) else nan,
        "kept_hit": _fraction(region_hits(kept, actor)) if has_actor else nan,
        "kept_cover": cover_fraction(kept, actor),
        "kept_area": float(kept.any(axis=0).mean()) if len(kept) else nan,
        # Regions partition the grid, so a random choice of len(salient) kept regions covers this share on average.
        "cover_chance": len(salient) / max(len(kept), 1) * cover_fraction(kept, actor),
        "area_chance": float(actor.mean()) if has_actor else nan,
        "token_names_actor": _fraction([k == "actor" for k in kinds]),
        "token_names_actor_on_hit": _fraction([k == "actor" for k, h in zip(kinds, hits, strict=True) if h])
        if has_actor else nan,
        "token_names_actor_on_miss": _fraction([k == "actor" for k, h in zip(kinds, hits, strict=True) if not h])
        if has_actor else nan,
        "token_names_verb": _fraction([k == "verb" for k in kinds]),
        "token_chance_actor": _fraction([k == "actor" for k in name_kinds]),
        "token_chance_verb": _fraction([k == "verb" for k in name_kinds]),
        # the label-free anchor's best class (none where the support side's anchor is its class text)
        "anchor_correct": nan if weights is None else float(int(weights.argmax()) == true_class),
        # the same question asked of CLIP's global embedding instead of the mean patch token (query side only)
        "global_anchor_correct": nan if weights is None else float(analysis["global_best_class"] == true_class),
        # the one patch closest to the anchor lies on the actor (key frames where the actor is in view): by its dense
        # token, or by CLIP's embedding of the frame with that patch alone visible (AMCAP.REGION_FEATURE masked)
        **{f"patch_hit_{kind}": _fraction([bool(actor[k].flatten()[p]) for k, p in enumerate(patches)
                                           if actor[k].any()]) if has_actor else nan
           for kind, patches in analysis["best_patches"].items()},
    }
    return stats, words


PAIR_KINDS = ("actor-actor", "actor-background", "background-background")


def pair_interactions(analysis: dict[str, Any], amcap: AMCAP, cells: dict[str, np.ndarray],
                      actor: str) -> dict[str, list[float]]:
    """The Shapley interactions (mean over key frames) of adjacent grid-cell pairs by kind: a cell is "actor" when
    an actor token lies in it on a key frame, "background" when no entity's token does (other pairs are left out)."""
    tokens_hw = next(iter(cells.values())).shape[1:]
    cell_of = cell_index_map(*tokens_hw, amcap.grid).numpy()  # [h, w] -> grid cell
    actor_cells = set(cell_of[cells[actor].any(axis=0)].tolist())
    entity_cells = set(cell_of[np.any([c.any(axis=0) for c in cells.values()], axis=0)].tolist())
    out: dict[str, list[float]] = {kind: [] for kind in PAIR_KINDS}
    for (i, j), value in zip(amcap.pairs.tolist(), analysis["info"]["interactions"][0].tolist(), strict=True):
        kinds = sorted("actor" if c in actor_cells else "background" if c not in entity_cells else "other"
                       for c in (i, j))
        kind = "-".join(kinds)
        if kind in out:
            out[kind].append(value)
    return out


def region_counts(analysis: dict[str, Any]) -> dict[str, int]:
    """Regions in the partition, kept (valid) and salient (valid) of one analysis."""
    regions = analysis["info"]["regions"]
    return {"partition": int(regions.labels[0].max()) + 1, "kept": int(regions.valid[0].sum()),
            "salient": len(salient_slots(analysis))}


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float | int | None]]:
    """Per measure: mean, 95% CI half-width (1.96 std / sqrt(n)) and n over the rows where it is defined."""
    out = {}
    for name in MEASURES:
        values = np.array([r[name] for r in rows if not math.isnan(r[name])])
        n = len(values)
        out[name] = {"mean": float(values.mean()) if n else None,
                     "ci95": float(1.96 * values.std(ddof=1) / math.sqrt(n)) if n > 1 else None, "n": n}
    return out


def stats_table(settings: dict[str, dict], num_classes: int) -> str:
    """Markdown: measure | query side | support side | chance (the compared measure, query / support)."""
    def cell(entry: dict) -> str:
        if entry["mean"] is None:
            return "-"
        return f"{entry['mean']:.3f}" + (f" ± {entry['ci95']:.3f}" if entry["ci95"] is not None else "")

    lines = ["| measure | query side | support side | chance |", "|---|---|---|---|"]
    for name, chance in TABLE_ROWS:
        q, s = settings["query"][name], settings["support"][name]
        if chance == "1/C":
            base = f"{1 / num_classes:.3f} (1/{num_classes})"
        elif chance:
            pair = [settings[k][chance]["mean"] for k in SETTINGS]
            base = " / ".join("-" if v is None else f"{v:.3f}" for v in pair) + f" ({chance})"
        else:
            base = ""
        lines.append(f"| {name} | {cell(q)} | {cell(s)} | {base} |")
    return "\n".join(lines)


def stats_videos(cfg: CfgNode, split: str, per_class: int) -> tuple[list[str], list[VideoEntry]]:
    """The split's class names and its first `per_class` videos of each class (0 = all), class by class."""
    loaded = load_split(cfg.DATA.ANNO_DIR, split)
    groups = loaded.videos_by_class()
    return loaded.class_names, [e for group in groups for e in (group[:per_class] if per_class else group)]


def video_track_file(cfg: CfgNode, entry: VideoEntry, video: OpenedVideo) -> TrackFile:
    path = track_path(cfg.DATA.TRACK_DIR, entry.video_id)
    if not os.path.isfile(path):
        raise ArgumentError(f"{path}: track file not found; region-stats needs every video's ground-truth tracks "
                            f"(DATA.TRACK_DIR)")
    track_file = load_track_file(path, entry.video_id)
    check_track_matches(track_file, path, video.num_frames, video.width, video.height)
    return track_file


def measure_video(cfg: CfgNode, backbone: CLIPBackbone, context: RegionContext, entry: VideoEntry, record: dict,
                  entity_words: set[str]) -> dict[str, tuple]:
    """Setting -> (MEASURES, the salient regions' top words, region counts, pair interactions by kind) of one video
    of the split; the video is decoded and encoded once for both settings."""
    clip = read_test_clip(cfg, entry)
    track_file = video_track_file(cfg, entry, clip.video)
    encoded = encode_clip(backbone, clip.images)
    key_frames = context.amcap.key_frame_indices(len(clip.indices)).tolist()  # the same for both settings
    cells = entity_cells(track_file, [clip.indices[k] for k in key_frames], clip.view, clip.video.size,
                         tuple(encoded["tokens"].shape[1:3]))
    if record["actor"] not in cells:
        raise ArgumentError(f"{track_path(cfg.DATA.TRACK_DIR, entry.video_id)}: no track labelled "
                            f"{record['actor']!r} (the actor of {record['name']!r})")
    out = {}
    for setting in SETTINGS:
        analysis = analyse_encoded(context, encoded, None if setting == "query" else entry.class_id)
        stats, words = setting_stats(analysis, cells, record, entity_words, entry.class_id)
        out[setting] = (stats, words, region_counts(analysis),
                        pair_interactions(analysis, context.amcap, cells, record["actor"]))
    return out


def region_stats(cfg: CfgNode, split: str, videos_per_class: int) -> dict[str, Any]:
    """Both settings' MEASURES over the split's videos, per class, the top aligned words and the region counts."""
    catalogue = read_world_catalogue(cfg.DATA.ANNO_DIR)
    class_names, entries = stats_videos(cfg, split, videos_per_class)
    missing = [name for name in class_names if name not in catalogue]
    if missing:
        raise ArgumentError(f"{os.path.join(cfg.DATA.ANNO_DIR, 'meta.json')}: catalogue has no class {missing[0]!r} "
                            f"of the {split} split")
    entity_words = {w for r in catalogue.values() for e in r["entities"] for w in (e["colour"], e["shape"])}
    seed_everything(cfg.RANDOM_SEED)
    backbone = CLIPBackbone(**CLIPBackbone.from_config(cfg)).eval()
    context = region_context(cfg, backbone, class_names)
    measured = [(entry, measure_video(cfg, backbone, context, entry, catalogue[class_names[entry.class_id]],
                                      entity_words)) for entry in entries]

    def rows(setting: str, class_id: int | None = None) -> list[dict[str, float]]:
        return [m[setting][0] for e, m in measured if class_id is None or e.class_id == class_id]

    return {"split": split, "videos": len(entries), "classes": class_names,
            "settings": {s: summarise(rows(s)) for s in SETTINGS},
            "per_class": {n: {s: {k: v["mean"] for k, v in summarise(rows(s, c)).items()} for s in SETTINGS}
                          for c, n in enumerate(class_names)},
            "top_words": {s: dict(sum((Counter(m[s][1]) for _, m in measured), Counter()).most_common())
                          for s in SETTINGS},
            "regions_per_video": {s: {k: float(np.mean([m[s][2][k] for _, m in measured]))
                                      for k in ("partition", "kept", "salient")} for s in SETTINGS},
            "pair_interactions": {s: {kind: interaction_summary([v for _, m in measured for v in m[s][3][kind]])
                                      for kind in PAIR_KINDS} for s in SETTINGS}}


def interaction_summary(values: list[float]) -> dict[str, float | int | None]:
    """Mean interaction, share above 0 and count of one kind of pair."""
    if not values:
        return {"mean": None, "positive": None, "n": 0}
    return {"mean": float(np.mean(values)), "positive": float(np.mean(np.array(values) > 0)), "n": len(values)}
