"""A compositional synthetic world: class names are sentences whose words (verbs, colours, shapes) mean something.

Entities have a colour and a shape (the words class names use) plus a size (small / big) and a texture (plain /
striped) that captions name. A class is a program of motions done by one acting entity, or an entity pushed
towards another ("lifting the red circle", "pushing the blue square left then lifting it", "pushing the green
triangle towards the yellow circle"); distractor entities stay still or drift.

Classes are built in groups of six fine-grained neighbours from entities A, B, C, D and motions m1, m2, m3:
  (m1, A) (m2, A)           same entity, other motion        (m1, B)            same motion, other entity
  (m2 then m3, C) (m3 then m2, C)   same motions in the other temporal order   (B towards D)
Even groups make the test split, odd ones the val split, later groups the training classes, minus every training class
that pairs a motion with an entity that acts with that motion in val/test. So novel classes are new combinations of
seen words: every val/test word occurs in a training class name, no val/test (motion, acting entity) pair does.
`check_catalogue` verifies both, and the fine-grained pairs, for every catalogue built.

Layout written into `out_dir` is the one datasets/synthetic.py writes (the existing dataset class, track reading
and tracker tests work unchanged); meta.json carries the catalogue with each class's program, entities and split.
`pretrain_scene` draws single captioned frames from the training vocabulary for runs/pretrain_clip.py.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from datasets.synthetic import split_sizes, track_record
from datasets.synthetic_render import (
    BASE_RADIUS_FRAC,
    EntityPath,
    make_background,
    noisy_detections,
    place,
    program_offsets,
    shape_mask,
    wander,
    write_mp4,
)
from datasets.tracks import write_track_file
from utils.logger import get_logger

logger = get_logger(__name__)

COLOURS = {"red": (220, 45, 45), "green": (50, 190, 70), "blue": (40, 100, 240), "yellow": (240, 210, 40),
           "purple": (150, 60, 210)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.75, "big": 1.3}  # radius factor of BASE_RADIUS_FRAC
TEXTURES = ("plain", "striped")
MOTIONS = ("up", "down", "left", "right", "grow", "shrink")
TOWARDS = "towards"
# A verb phrase per motion; {x} is the entity ("the red circle", or "it" in the second step of a program).
VERB_PHRASES = {"up": "lifting {x}", "down": "dropping {x}", "left": "pushing {x} left", "right": "pushing {x} right",
                "grow": "growing {x}", "shrink": "shrinking {x}"}
MIN_CLASSES = 20
TOWARDS_GAP = 2.0  # pixels left between the pushed entity and its target at the end


@dataclass(frozen=True)
class WorldClass:
    name: str  # the class-name file entry, an English phrase
    program: tuple[str, ...]  # motions of the actor in order, or ("towards",)
    actor: str  # "red circle"
    target: str  # the entity pushed towards ("" unless program is ("towards",))
    group: int

    @property
    def class_dir(self) -> str:
        return self.name.replace(" ", "_")

    @property
    def atoms(self) -> set[tuple[str, str]]:
        """(motion, acting entity) pairs: what a novel class must not share with any training class."""
        return {(m, self.actor) for m in self.program}


def class_phrase(program: tuple[str, ...], actor: str, target: str = "") -> str:
    if program == (TOWARDS,):
        return f"pushing the {actor} towards the {target}"
    steps = [VERB_PHRASES[m].format(x=f"the {actor}" if k == 0 else "it") for k, m in enumerate(program)]
    return " then ".join(steps)


def _group(g: int, entities: list[str], motions: list[str]) -> list[WorldClass]:
    """The six fine-grained neighbours of group `g` (see module doc)."""
    a, b, c, d = (entities[(4 * g + i) % len(entities)] for i in range(4))
    m1, m2, m3 = (motions[(3 * g + i) % len(motions)] for i in range(3))  # two groups use every motion
    specs = [((m1,), a, ""), ((m2,), a, ""), ((m1,), b, ""), ((m2, m3), c, ""), ((m3, m2), c, ""),
             ((TOWARDS,), b, d)]
    return [WorldClass(class_phrase(p, actor, target), p, actor, target, g) for p, actor, target in specs]


def world_catalogue(num_classes: int, seed: int = 0) -> dict[str, list[WorldClass]]:
    """{split: classes}; the entity and motion orders are drawn from `seed`, the construction is the module doc's."""
    if num_classes < MIN_CLASSES:  # fewer training classes cannot teach every word the novel classes use
        raise ValueError(f"make_world: needs at least {MIN_CLASSES} classes, got {num_classes}")
    n_train, n_val, n_test = split_sizes(num_classes)
    rng = np.random.default_rng([seed, 7])
    entities = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    entities = [entities[i] for i in rng.permutation(len(entities))]
    motions = [MOTIONS[i] for i in rng.permutation(len(MOTIONS))]
    eval_groups = -(-max(n_val, n_test) // 6)
    # Test takes the even groups, val the odd ones, so both hold complete groups of fine-grained neighbours.
    test = [c for g in range(0, 2 * eval_groups, 2) for c in _group(g, entities, motions)][:n_test]
    val = [c for g in range(1, 2 * eval_groups, 2) for c in _group(g, entities, motions)][:n_val]
    held_out = set().union(*(c.atoms for c in test + val))
    candidates, names = [], {c.name for c in test + val}
    for g in range(2 * eval_groups, 2 * eval_groups + 60):
        for cls in _group(g, entities, motions):
            if not cls.atoms & held_out and cls.name not in names:
                candidates.append(cls)
                names.add(cls.name)
    splits = {"train": _pick_train(candidates, test + val, n_train), "val": val, "test": test}
    check_catalogue(splits)
    return splits


def _pick_train(candidates: list[WorldClass], novel: list[WorldClass], n_train: int) -> list[WorldClass]:
    """First the candidates that teach words the novel classes use (greedily, most new words first), then the
    rest in group order; returned in group order, so neighbours stay together."""
    missing = {w for c in novel for w in c.name.split()}
    chosen: list[int] = []
    while missing and len(chosen) < n_train:
        gain = [len(missing & set(c.name.split())) if i not in chosen else -1 for i, c in enumerate(candidates)]
        best = int(np.argmax(gain))
        if gain[best] <= 0:
            break
        chosen.append(best)
        missing -= set(candidates[best].name.split())
    rest = [i for i in range(len(candidates)) if i not in chosen]
    return [candidates[i] for i in sorted(chosen + rest[:n_train - len(chosen)])]


def fine_grained_pairs(classes: list[WorldClass]) -> dict[str, int]:
    """How many class pairs differ only in the entity, only in the motion, or only in the temporal order."""
    found = {"other_entity": 0, "other_motion": 0, "other_order": 0}
    for i, x in enumerate(classes):
        for y in classes[i + 1:]:
            found["other_entity"] += x.program == y.program and x.actor != y.actor
            found["other_motion"] += x.actor == y.actor and x.program != y.program and \
                sorted(x.program) != sorted(y.program)
            found["other_order"] += x.actor == y.actor and len(x.program) == 2 and x.program == y.program[::-1]
    return found


def check_catalogue(splits: dict[str, list[WorldClass]]) -> None:
    """Raise ValueError unless novel classes are new combinations of seen words, with fine-grained pairs."""
    train = splits["train"]
    train_words = {w for c in train for w in c.name.split()}
    train_atoms = set().union(*(c.atoms for c in train))
    for split in ("val", "test"):
        for cls in splits[split]:
            unseen = set(cls.name.split()) - train_words
            if unseen:
                raise ValueError(f"make_world: {split} class '{cls.name}' has words no training class has: {unseen}")
            if cls.atoms & train_atoms:
                raise ValueError(f"make_world: {split} class '{cls.name}' shares {cls.atoms & train_atoms} with "
                                 f"training")
    for split in ("train", "test"):
        missing = [k for k, n in fine_grained_pairs(splits[split]).items() if n == 0]
        if len(splits[split]) >= 5 and missing:
            raise ValueError(f"make_world: the {split} split has no fine-grained pair of kind {missing}")


# ---------------------------------------------------------------------------------------------------------------
# Drawing: entity paths (reusing datasets/synthetic_render.py) with a size and a texture each.


@dataclass
class Look:
    """What a caption says about an entity beyond its name."""

    size: str  # small | big
    texture: str  # plain | striped


def _random_look(rng: np.random.Generator) -> Look:
    return Look(str(rng.choice(list(SIZES))), str(rng.choice(TEXTURES)))


def _path(name: str, look: Look, offsets: np.ndarray, scales: np.ndarray, size: int, rng: np.random.Generator,
          avoid: list[np.ndarray]) -> EntityPath:
    colour, shape = name.split()
    radii = BASE_RADIUS_FRAC * SIZES[look.size] * size * scales
    centres = place(offsets, radii, size, rng, avoid)
    avoid.append(centres[0])
    return EntityPath(name, shape, COLOURS[colour], centres, radii)


def _towards_path(actor: EntityPath, target: EntityPath, frames: int, rng: np.random.Generator) -> None:
    """Move `actor` (placed still) towards `target` over a randomly margined span, stopping just short of it."""
    t = np.arange(frames, dtype=np.float64)
    last = frames - 1
    start, end = rng.uniform(0.0, 0.15) * last, rng.uniform(0.85, 1.0) * last
    progress = np.clip((t - start) / max(end - start, 1e-6), 0.0, 1.0)
    progress = progress * progress * (3 - 2 * progress)
    delta = target.centres[-1] - actor.centres[0]
    dist = max(float(np.linalg.norm(delta)), 1e-6)
    reach = max(dist - actor.radii[0] - target.radii[0] - TOWARDS_GAP, 0.0) / dist
    actor.centres = actor.centres[0] + progress[:, None] * delta * reach


def _distractor_offsets(frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Half stay still (a small wander), half drift slowly in a random direction."""
    still = wander(frames, size, rng)
    if rng.random() < 0.5:
        return still
    angle = rng.uniform(0, 2 * np.pi)
    drift = np.linspace(0, 1, frames)[:, None] * 0.12 * size * np.array([np.cos(angle), np.sin(angle)])
    return still + drift


def video_entities(cls: WorldClass, frames: int, size: int, distractors: int,
                   rng: np.random.Generator) -> tuple[list[EntityPath], list[Look]]:
    """Entity paths and looks in drawing order: distractors, target, actor (on top)."""
    avoid: list[np.ndarray] = []
    paths, looks = [], []
    if cls.target:
        look = _random_look(rng)
        paths.append(_path(cls.target, look, wander(frames, size, rng), np.ones(frames), size, rng, avoid))
        looks.append(look)
        actor_look = _random_look(rng)
        # Start far from the target (the best of a few draws), so the push covers a good part of the frame.
        starts = [_path(cls.actor, actor_look, np.zeros((frames, 2)), np.ones(frames), size, rng, []) for _ in
                  range(6)]
        actor = max(starts, key=lambda p: float(np.linalg.norm(p.centres[0] - paths[0].centres[0])))
        avoid.append(actor.centres[0])
        _towards_path(actor, paths[0], frames, rng)
    else:
        actor_look = _random_look(rng)
        offsets, scales = program_offsets(cls.program, frames, size, rng)
        actor = _path(cls.actor, actor_look, offsets, scales, size, rng, avoid)
    others = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in (cls.actor, cls.target)]
    front, front_looks = [], []
    for k in rng.permutation(len(others))[:distractors]:
        look = _random_look(rng)
        front.append(_path(others[k], look, _distractor_offsets(frames, size, rng), np.ones(frames), size, rng,
                           avoid))
        front_looks.append(look)
    return [*front, *paths, actor], [*front_looks, *looks, actor_look]


def render_textured(background: np.ndarray, entities: list[EntityPath], looks: list[Look],
                    rng: np.random.Generator, noise: float = 2.0) -> np.ndarray:
    """uint8 [F, S, S, 3]; striped entities alternate their colour with a darker shade in diagonal bands."""
    frames = len(entities[0].radii)
    size = background.shape[0]
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        canvas = background + noise * rng.standard_normal(background.shape, dtype=np.float32)
        for ent, look in zip(entities, looks, strict=True):
            cx, cy, r = ent.centres[f, 0], ent.centres[f, 1], ent.radii[f]
            x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, size)
            y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, size)
            yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
            mask = shape_mask(ent.shape, cx, cy, r, xx, yy)
            window = canvas[y0:y1, x0:x1]
            window[mask] = ent.colour
            if look.texture == "striped":
                band = mask & ((np.floor((xx + yy) / 2.5) % 2) == 1)
                window[band] = 0.35 * np.asarray(ent.colour, dtype=np.float32)
        out[f] = np.clip(canvas, 0, 255).astype(np.uint8)
    return out


def render_world_video(cls: WorldClass, frames: int, size: int, distractors: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, list[EntityPath]]:
    """Frames [F, S, S, 3] and entity paths (drawing order)."""
    background = make_background(size, rng)
    entities, looks = video_entities(cls, frames, size, distractors, rng)
    return render_textured(background, entities, looks, rng), entities


def video_rng(seed: int, class_index: int, video: int) -> np.random.Generator:
    """The generator of one video: a video is a pure function of (seed, class, video number)."""
    return np.random.default_rng([seed, 1_000 + class_index, video])


# ---------------------------------------------------------------------------------------------------------------
# Captions for contrastive pretraining: single frames drawn from the training vocabulary.


def where(centre: np.ndarray, size: int) -> str:
    """"at the top left", "at the bottom", "in the centre": thirds of the frame."""
    col = ("left", "", "right")[min(int(3 * centre[0] / size), 2)]
    row = ("top", "", "bottom")[min(int(3 * centre[1] / size), 2)]
    place_words = " ".join(w for w in (row, col) if w)
    return f"at the {place_words}" if place_words else "in the centre"


def describe(entities: list[EntityPath], looks: list[Look], frame: int, size: int,
             rng: np.random.Generator) -> str:
    """"a big red circle at the top left and a small striped green square at the bottom" (random order)."""
    parts = []
    for k in rng.permutation(len(entities)):
        ent, look = entities[k], looks[k]
        texture = "striped " if look.texture == "striped" else ""
        parts.append(f"a {look.size} {texture}{ent.name} {where(ent.centres[frame], size)}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def pretrain_scene(train: list[WorldClass], size: int, frames: int, rng: np.random.Generator,
                   motion_prob: float = 0.5) -> tuple[np.ndarray, str]:
    """One captioned frame (uint8 [S, S, 3], caption): a still scene of 1-3 entities, or with `motion_prob` one
    frame of a training-class video captioned with its action phrase. Val/test phrases never occur."""
    # Clutter varies from none to the videos' amount: with a cluttered background in every frame, a model trained
    # from scratch first learns the background (which no caption names) and sits at chance for hundreds of steps.
    background = make_background(size, rng, clutter=int(rng.integers(0, 7)))
    if rng.random() < motion_prob:
        cls = train[int(rng.integers(len(train)))]
        entities, looks = video_entities(cls, frames, size, int(rng.integers(0, 2)), rng)
        frame = int(rng.integers(frames))
        entities = [EntityPath(e.name, e.shape, e.colour, e.centres[frame:frame + 1], e.radii[frame:frame + 1])
                    for e in entities]
        image = render_textured(background, entities, looks, rng)[0]
        caption = cls.name if rng.random() < 0.5 else f"{cls.name}, {describe(entities, looks, 0, size, rng)}"
    else:
        names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
        avoid: list[np.ndarray] = []
        entities, looks = [], []
        for k in rng.permutation(len(names))[:int(rng.choice([1, 1, 2, 2, 3]))]:
            look = _random_look(rng)
            entities.append(_path(names[k], look, np.zeros((1, 2)), np.ones(1), size, rng, avoid))
            looks.append(look)
        image = render_textured(background, entities, looks, rng)[0]
        caption = describe(entities, looks, 0, size, rng)
    return image, (f"a photo of {caption}" if rng.random() < 0.5 else caption)


# ---------------------------------------------------------------------------------------------------------------
# Writing the world in the benchmark layout.


def _write_json(path: str, data: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))


def _write_split(out_dir: str, split: str, members: list[WorldClass], index: dict[str, int], args: dict,
                 detections: dict[str, dict]) -> None:
    lines = []
    frames, size = args["frames"], args["size"]
    for cid, cls in enumerate(members):
        os.makedirs(os.path.join(out_dir, "videos", cls.class_dir), exist_ok=True)
        for k in range(args["videos_per_class"]):
            rel = f"videos/{cls.class_dir}/{cls.class_dir}_{k:03d}"
            rng = video_rng(args["seed"], index[cls.name], k)
            video, entities = render_world_video(cls, frames, size, args["distractors"], rng)
            write_mp4(os.path.join(out_dir, rel + ".mp4"), video, args["fps"])
            write_track_file(os.path.join(out_dir, "tracks", rel + ".json"), track_record(rel, entities, size, rng))
            detections[rel] = {"num_frames": frames, "width": size, "height": size,
                               "frames": noisy_detections(entities, size, rng)}
            lines.append(f"{split}{cid}//{rel}.mp4")
    with open(os.path.join(out_dir, f"{split}_few_shot.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, f"{split}_class_names.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(c.name for c in members) + "\n")


def class_index(splits: dict[str, list[WorldClass]]) -> dict[str, int]:
    """Class name -> its index over all splits (train, val, test order), which seeds its videos."""
    return {c.name: i for i, c in enumerate(c for s in ("train", "val", "test") for c in splits[s])}


def catalogue_record(cls: WorldClass, split: str) -> dict:
    entities = [cls.actor, *([cls.target] if cls.target else [])]
    return {**asdict(cls), "split": split, "verb": " then ".join(cls.program),
            "entities": [{"name": e, "colour": e.split()[0], "shape": e.split()[1],
                          "role": "actor" if k == 0 else "target"} for k, e in enumerate(entities)]}


def make_world(out_dir: str, classes: int = 30, videos_per_class: int = 20, frames: int = 16, size: int = 64,
               seed: int = 0, distractors: int = 2, fps: int = 12) -> dict:
    """Write the world into `out_dir` in the benchmark layout; returns a summary dict. Deterministic per seed."""
    if size < 32 or size % 2:
        raise ValueError(f"make_world: size must be even and >= 32, got {size}")
    if frames < 2 or videos_per_class < 1 or distractors < 0:
        raise ValueError(f"make_world: need frames >= 2, videos_per_class >= 1, distractors >= 0; got "
                         f"{frames}, {videos_per_class}, {distractors}")
    start = time.time()
    splits = world_catalogue(classes, seed)
    args = {"seed": seed, "classes": classes, "videos_per_class": videos_per_class, "frames": frames, "size": size,
            "distractors": distractors, "fps": fps}
    detections: dict[str, dict] = {}
    index = class_index(splits)
    for split, members in splits.items():
        _write_split(out_dir, split, members, index, args, detections)
    _write_json(os.path.join(out_dir, "detections.json"), detections)
    meta = {"kind": "world", **args,
            "vocabulary": {"colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES),
                           "textures": list(TEXTURES), "verbs": VERB_PHRASES},
            "catalogue": [catalogue_record(c, s) for s, members in splits.items() for c in members]}
    _write_json(os.path.join(out_dir, "meta.json"), meta)
    summary = {"out_dir": out_dir, "classes": {s: len(m) for s, m in splits.items()},
               "videos": classes * videos_per_class, "seconds": round(time.time() - start, 2)}
    logger.info("synthetic world: %s", summary)
    return summary
