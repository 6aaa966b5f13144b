"""A procedural few-shot benchmark in exactly the real layout, so every code path runs offline.

Each class is what one actor entity does over time ("red circle moves left then up") among a passive
partner entity, distractor entities that also move, and background clutter. Classes come in groups of
three fine-grained neighbours:
  (actor a, motion 1 then motion 2), (actor a, motion 2 then motion 1)  -> differ only in temporal order
  (actor b, motion 1 then motion 2)                                      -> differ only in which entity acts
where a and b appear in each other's videos (the one that does not act stays passive), so both temporal
alignment and entity focus matter. Distractors have colours no actor uses, so labels stay unambiguous.

Layout written into `out_dir` (the `//` split format):
  {train,val,test}_few_shot.txt   `<split><classid>//videos/<class_dir>/<class_dir>_<k>.mp4`
  {train,val,test}_class_names.txt
  videos/<class_dir>/*.mp4        H.264, `size` x `size`, `frames` frames
  tracks/<video id>.json          docs/design.md §4 track files: every entity's ground-truth boxes
  detections.json                 per video, per frame noisy detector output (for tracker tests)
  meta.json                       the class catalogue and generation arguments
  generation.partial              only while a generation runs (`generate`): a folder holding it was cut short
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass

import numpy as np

from datasets.synthetic_render import (
    BASE_RADIUS_FRAC,
    EntityPath,
    make_background,
    noisy_detections,
    place,
    program_offsets,
    render_frames,
    wander,
    write_mp4,
)
from datasets.tracks import write_track_file
from utils.atomic import atomic_write, unwritable
from utils.config import NON_NEGATIVE, POSITIVE, CfgNode, ConfigError, one_of, rules, section
from utils.errors import RunFolderError
from utils.logger import get_logger
from utils.run_lock import holder_alive

logger = get_logger(__name__)

ACTOR_COLOURS = {"red": (220, 45, 45), "blue": (40, 100, 240), "green": (50, 190, 70), "yellow": (240, 210, 40),
                 "magenta": (210, 60, 210), "cyan": (40, 210, 215), "orange": (250, 135, 40)}
DISTRACTOR_COLOURS = {"white": (240, 240, 240), "grey": (160, 160, 160), "black": (15, 15, 15),
                      "brown": (125, 80, 40)}
SHAPES = ("circle", "square", "triangle")
# Unordered motion pairs; each group uses one, in both orders.
PROGRAMS = [("left", "up"), ("right", "down"), ("left", "down"), ("right", "up"), ("left", "grow"),
            ("right", "shrink"), ("up", "grow"), ("down", "shrink"), ("right", "grow"), ("left", "shrink"),
            ("down", "grow"), ("up", "shrink")]
VERBS = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down", "grow": "grows",
         "shrink": "shrinks"}


@dataclass(frozen=True)
class SyntheticClass:
    name: str  # short action phrase, also the class-name file entry
    actor: str  # "red circle"
    partner: str  # the group's other actor, passive in this class's videos
    program: tuple[str, ...]  # motions of the actor, in order
    group: int

    @property
    def class_dir(self) -> str:
        return self.name.replace(" ", "_")


def _identities() -> list[tuple[str, str]]:
    """(colour, shape) actor identities ordered so neighbours differ in colour and shape."""
    colours = list(ACTOR_COLOURS)
    return [(colours[k % len(colours)], SHAPES[k % len(SHAPES)]) for k in range(len(colours) * len(SHAPES))]


def class_phrase(actor: str, program: tuple[str, ...]) -> str:
    verbs = [VERBS[m] for m in program]
    if len(verbs) == 2 and all(v.startswith("moves ") for v in verbs):
        return f"{actor} {verbs[0]} then {verbs[1][len('moves '):]}"
    return f"{actor} " + " then ".join(verbs)


def class_catalogue(num_classes: int) -> list[SyntheticClass]:
    """The first `num_classes` classes, in groups of three fine-grained neighbours (see module doc)."""
    ids = [f"{c} {s}" for c, s in _identities()]
    classes: list[SyntheticClass] = []
    group = 0
    while len(classes) < num_classes:
        a, b = ids[(2 * group) % len(ids)], ids[(2 * group + 1) % len(ids)]
        m1, m2 = PROGRAMS[group % len(PROGRAMS)]
        for actor, partner, program in ((a, b, (m1, m2)), (a, b, (m2, m1)), (b, a, (m1, m2))):
            classes.append(SyntheticClass(class_phrase(actor, program), actor, partner, program, group))
        group += 1
    classes = classes[:num_classes]
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"make_synthetic: at most {len(ids) * len(PROGRAMS) // 3 * 3} distinct classes, "
                         f"asked for {num_classes}")
    return classes


def split_sizes(num_classes: int) -> tuple[int, int, int]:
    """(train, val, test) class counts: at least 5 val and test classes (5-way) once there are 15 classes."""
    if num_classes < 3:
        raise ValueError(f"make_synthetic: need at least 3 classes (one per split), got {num_classes}")
    n_eval = max(5, round(num_classes / 5)) if num_classes >= 15 else num_classes // 3
    return num_classes - 2 * n_eval, n_eval, n_eval


def _entity(name: str, colour: tuple[int, int, int], offsets: np.ndarray, scales: np.ndarray, size: int,
            rng: np.random.Generator, avoid: list[np.ndarray]) -> EntityPath:
    shape = name.split()[-1]
    radii = BASE_RADIUS_FRAC * size * scales
    centres = place(offsets, radii, size, rng, avoid)
    avoid.append(centres[0])
    return EntityPath(name, shape, colour, centres, radii)


def render_video(cls: SyntheticClass, frames: int, size: int, distractors: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[EntityPath]]:
    """Frames [F, S, S, 3] and entity paths (distractors, partner, actor: drawing order)."""
    background = make_background(size, rng)
    avoid: list[np.ndarray] = []
    offsets, scales = program_offsets(cls.program, frames, size, rng)
    actor = _entity(cls.actor, ACTOR_COLOURS[cls.actor.split()[0]], offsets, scales, size, rng, avoid)
    partner = _entity(cls.partner, ACTOR_COLOURS[cls.partner.split()[0]], wander(frames, size, rng),
                      np.ones(frames), size, rng, avoid)
    colours = list(DISTRACTOR_COLOURS)
    others = []
    for k in rng.permutation(len(colours) * len(SHAPES))[:distractors]:
        colour, shape = colours[k % len(colours)], SHAPES[k // len(colours)]
        motion = (str(rng.choice(list(VERBS))),)  # distractors move too, one motion at reduced amplitude
        d_off, d_scale = program_offsets(motion, frames, size, rng, amplitude=0.6)
        others.append(_entity(f"{colour} {shape}", DISTRACTOR_COLOURS[colour], d_off + wander(frames, size, rng),
                              d_scale, size, rng, avoid))
    entities = [*others, partner, actor]
    return render_frames(background, entities, rng), entities


def track_record(video_id: str, entities: list[EntityPath], size: int, rng: np.random.Generator) -> dict:
    """docs/design.md §4 track file with every entity's ground truth; ids shuffled so slot order says nothing."""
    frames = len(entities[0].radii)
    ids = rng.permutation(len(entities)).tolist()
    tracks = [{"id": int(i), "label": ent.name, "frames": list(range(frames)),
               "boxes": [[round(float(v), 2) for v in box] for box in ent.boxes(size)], "scores": [1.0] * frames}
              for i, ent in zip(ids, entities, strict=True)]
    tracks.sort(key=lambda t: t["id"])
    return {"video": video_id, "num_frames": frames, "width": size, "height": size, "tracks": tracks,
            "detector": "ground_truth", "tracker": "ground_truth"}


def _write_json(path: str, data: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))


def make_synthetic(out_dir: str, classes: int = 30, videos_per_class: int = 20, frames: int = 16, size: int = 64,
                   seed: int = 0, distractors: int = 2, fps: int = 12) -> dict:
    """Write the benchmark into `out_dir` (see module doc); returns a summary dict. Deterministic per seed."""
    if size < 32 or size % 2:
        raise ValueError(f"make_synthetic: size must be even and >= 32, got {size}")
    if frames < 2 or videos_per_class < 1 or distractors < 0:
        raise ValueError(f"make_synthetic: need frames >= 2, videos_per_class >= 1, distractors >= 0; got "
                         f"{frames}, {videos_per_class}, {distractors}")
    start = time.time()
    catalogue = class_catalogue(classes)
    n_train, n_val, _ = split_sizes(classes)
    splits = {"train": catalogue[:n_train], "val": catalogue[n_train:n_train + n_val],
              "test": catalogue[n_train + n_val:]}
    detections: dict[str, dict] = {}
    global_index = {c.name: i for i, c in enumerate(catalogue)}
    for split, members in splits.items():
        lines = []
        for cid, cls in enumerate(members):
            os.makedirs(os.path.join(out_dir, "videos", cls.class_dir), exist_ok=True)
            for k in range(videos_per_class):
                rel = f"videos/{cls.class_dir}/{cls.class_dir}_{k:03d}"
                rng = np.random.default_rng([seed, global_index[cls.name], k])
                video, entities = render_video(cls, frames, size, distractors, rng)
                write_mp4(os.path.join(out_dir, rel + ".mp4"), video, fps)
                write_track_file(os.path.join(out_dir, "tracks", rel + ".json"), track_record(rel, entities, size, rng))
                detections[rel] = {"num_frames": frames, "width": size, "height": size,
                                   "frames": noisy_detections(entities, size, rng)}
                lines.append(f"{split}{cid}//{rel}.mp4")
        with open(os.path.join(out_dir, f"{split}_few_shot.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(out_dir, f"{split}_class_names.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(c.name for c in members) + "\n")
    _write_json(os.path.join(out_dir, "detections.json"), detections)
    meta = {"seed": seed, "classes": classes, "videos_per_class": videos_per_class, "frames": frames, "size": size,
            "distractors": distractors, "fps": fps,
            "catalogue": [{**asdict(c), "split": s} for s, members in splits.items() for c in members]}
    _write_json(os.path.join(out_dir, "meta.json"), meta)
    summary = {"out_dir": out_dir, "classes": {s: len(m) for s, m in splits.items()},
               "videos": classes * videos_per_class, "seconds": round(time.time() - start, 2)}
    logger.info("synthetic benchmark: %s", summary)
    return summary


def add_synthetic_config(cfg: CfgNode) -> None:
    _S = section(cfg, "SYNTHETIC")
    _S.GENERATE = False  # Synthetic_few_shot: generate into DATA.ANNO_DIR if its lists are missing or were cut short
    _S.CLASSES = 30  # classes (split into train/val/test)
    _S.VIDEOS_PER_CLASS = 20  # videos per class
    _S.FRAMES = 16  # frames per video
    _S.SIZE = 64  # video side in pixels
    _S.DISTRACTORS = 2  # moving distractor entities per video
    _S.SEED = 0  # generator seed (same seed, same files)
    _S.KIND = "benchmark"  # benchmark (this module) or world (datasets/synthetic_world.py: compositional class names)
    rules("SYNTHETIC", CLASSES=POSITIVE, VIDEOS_PER_CLASS=POSITIVE, FRAMES=POSITIVE, SIZE=POSITIVE,
          DISTRACTORS=NON_NEGATIVE, SEED=NON_NEGATIVE, KIND=one_of("benchmark", "world"))


# Written into the folder before a generation starts and removed once it has completed: a folder holding it was cut
# short (a killed process leaves some lists and videos, not all) and is generated again.
PARTIAL = "generation.partial"


def generate(kind: str, out_dir: str, **kwargs) -> dict:
    """make_synthetic (kind 'benchmark') or make_world (kind 'world') into `out_dir`, marked PARTIAL until done."""
    if kind == "world":
        from datasets.synthetic_world import make_world  # the world module builds on this one's helpers

        make = make_world
    else:
        make = make_synthetic
    os.makedirs(out_dir, exist_ok=True)
    marker = os.path.join(out_dir, PARTIAL)
    record = {"kind": kind, **kwargs, "pid": os.getpid(), "host": socket.gethostname(), "start": time.time()}
    atomic_write(marker, lambda f: json.dump(record, f), binary=False)
    try:
        summary = make(out_dir, **kwargs)
    except ValueError:  # arguments refused before anything was written
        os.remove(marker)
        raise
    os.remove(marker)
    return summary


def _marker_record(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def generation_reason(cfg: CfgNode) -> str:
    """Why SYNTHETIC.GENERATE must write DATA.ANNO_DIR now ('' when it need not): no split lists there yet, or a
    generation that was cut short (its PARTIAL marker is still there and its process is gone; a live one on this host
    is a RunFolderError: two generations would write the same files)."""
    root = cfg.DATA.ANNO_DIR
    if not cfg.SYNTHETIC.GENERATE:
        return ""
    marker = os.path.join(root, PARTIAL)
    if os.path.isfile(marker):
        holder = _marker_record(marker)
        if holder.get("host") == socket.gethostname() and holder_alive(holder):
            raise RunFolderError(f"{marker}: the synthetic {cfg.SYNTHETIC.KIND} is being generated there by pid "
                                 f"{holder['pid']} (wait for that job to end, or set DATA.ANNO_DIR and "
                                 f"DATA.DATA_ROOT_DIR to another folder)")
        return f"{marker} says the generation there was cut short (the process was killed before it completed)"
    if os.path.isfile(os.path.join(root, "train_few_shot.txt")):
        return ""
    return "no split lists there yet"


def check_can_generate(cfg: CfgNode) -> str:
    """Before anything is generated: the folder SYNTHETIC.GENERATE must write is one this user can write and no live
    generation writes (a one-line error, not one halfway through); returns `generation_reason`."""
    reason = generation_reason(cfg)
    root = cfg.DATA.ANNO_DIR
    if not reason:
        return ""
    if os.path.abspath(cfg.DATA.DATA_ROOT_DIR) != os.path.abspath(root):
        raise ConfigError(f"SYNTHETIC.GENERATE writes videos and lists into one folder: DATA.DATA_ROOT_DIR "
                          f"({cfg.DATA.DATA_ROOT_DIR}) must equal DATA.ANNO_DIR ({root})")
    problem = unwritable(root)
    if problem:
        raise ConfigError(f"{root}: SYNTHETIC.GENERATE must write the synthetic {cfg.SYNTHETIC.KIND} into "
                          f"DATA.ANNO_DIR ({reason}), but the folder {problem} (make it writable, or set "
                          f"DATA.ANNO_DIR and DATA.DATA_ROOT_DIR to a writable folder)")
    return reason


def ensure_synthetic(cfg: CfgNode) -> None:
    """Generate the benchmark into DATA.ANNO_DIR (= DATA.DATA_ROOT_DIR) when SYNTHETIC.GENERATE and its lists are
    missing or its last generation was cut short."""
    reason = check_can_generate(cfg)
    if not reason:
        return
    root, syn = cfg.DATA.ANNO_DIR, cfg.SYNTHETIC
    if os.path.isfile(os.path.join(root, PARTIAL)):
        logger.warning("%s: %s: generating it again", root, reason)
    logger.info("generating the synthetic %s into %s (%d classes x %d videos)", syn.KIND, root, syn.CLASSES,
                syn.VIDEOS_PER_CLASS)
    generate(syn.KIND, root, classes=syn.CLASSES, videos_per_class=syn.VIDEOS_PER_CLASS, frames=syn.FRAMES,
             size=syn.SIZE, seed=syn.SEED, distractors=syn.DISTRACTORS)
