"""What each key of a CLIP-FSAR config becomes here (runs/convert_clipfsar_config.py reads and writes the files).

`convert(lineage keys)` accounts for every key once: mapped (the same meaning here, under our name), translated
(what the lineage's code computes from it, in our keys; each translation reads the lineage's code, named in its
text), or dropped with the reason; keys it does not know and values this project cannot express are named all
together in one ConfigError. Each entry says which of the lineage's files it was read from: runs/run.py,
runs/train_net_few_shot.py, datasets/base/{base_dataset,ssv2_few_shot}.py, models/base/few_shot.py,
models/utils/{optimizer,lr_policy}.py, utils/{config,checkpoint,launcher}.py of alibaba-mmai-research/CLIP-FSAR.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from datasets.build import CLIP_MEAN, CLIP_STD
from datasets.splits import read_class_names, split_files
from utils.config import ConfigError
from utils.errors import ArgumentError

# benchmark (the lineage's folder name under configs/projects/CLIPFSAR) -> (our dataset entry, the lineage's
# TRAIN.DATASET_FEW, our shipped config's name part)
BENCHMARKS = {
    "ssv2_full": ("Ssv2_few_shot", None, "SSv2_Full"),
    "ssv2_small": ("Ssv2_few_shot", None, "SSv2_Small"),
    "kinetics100": ("Kinetics100_few_shot", "Kinetics_few_shot", "K100"),
    "ucf101": ("Ucf101_few_shot", "HMDB_few_shot", "UCF101"),
    "hmdb51": ("Hmdb51_few_shot", "HMDB_few_shot", "HMDB51"),
}


@dataclass
class Conversion:
    """What the lineage's keys become: our values (with the note written beside each) and one summary entry per
    lineage key."""

    lineage: dict[str, Any]
    ours: dict[str, tuple[Any, str]] = field(default_factory=dict)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (lineage key, our key)
    translated: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # (lineage keys, what they became)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (lineage key, reason)
    refused: list[str] = field(default_factory=list)  # values this project cannot express, with why
    notes: list[str] = field(default_factory=list)  # what a user should know about the converted values
    done: set[str] = field(default_factory=set)

    def get(self, key: str, default: Any = None) -> Any:
        return self.lineage.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.lineage

    def set(self, key: str, value: Any, note: str) -> None:
        self.ours[key] = (value, note)

    def map(self, key: str, ours: str | None = None) -> None:
        if key in self.lineage and key not in self.done:
            self.set(ours or key, self.lineage[key], f"CLIP-FSAR {key}")
            self.mapped.append((key, ours or key))
            self.done.add(key)

    def translate(self, keys: tuple[str, ...], text: str) -> None:
        present = tuple(k for k in keys if k in self.lineage and k not in self.done)
        if present:
            self.translated.append((present, text))
            self.done.update(present)

    def drop(self, key: str, reason: str) -> None:
        if key in self.lineage and key not in self.done:
            self.dropped.append((key, reason))
            self.done.add(key)

    def refuse(self, key: str, why: str) -> None:
        self.refused.append(f"{key} {show(self.lineage.get(key))} ({why})")
        self.done.add(key)


def yaml_value(value: Any) -> str:
    """`value` as one line of YAML."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def show(value: Any) -> str:
    """`value` for the summary (long lists counted)."""
    return f"[{len(value)} entries]" if isinstance(value, list) and len(value) > 6 else yaml_value(value)


# Keys read with the same meaning here, under the same name unless a second one is given.
SAME = {key: None for key in (
    "TRAIN.ENABLE", "TRAIN.WAY", "TRAIN.SHOT", "TRAIN.SHOT_TEST", "TRAIN.QUERY_PER_CLASS",
    "TRAIN.QUERY_PER_CLASS_TEST", "TRAIN.NUM_TRAIN_TASKS", "TRAIN.NUM_TEST_TASKS", "TRAIN.VAL_FRE_ITER",
    "TRAIN.BATCH_SIZE_PER_TASK", "TRAIN.USE_CLASSIFICATION", "TRAIN.USE_CLASSIFICATION_VALUE", "TRAIN.MERGE_BEFORE",
    "TRAIN.SINGLE_DIRECT", "TRAIN.EVAL_TEXT", "TRAIN.COMBINE", "TRAIN.CLIP_GRAD_NORM", "DATA.NUM_INPUT_FRAMES",
    "DATA.TRAIN_CROP_SIZE", "DATA.TEST_CROP_SIZE", "DATA.DATA_ROOT_DIR",
    "AUGMENTATION.SUPPORT_QUERY_DIFF", "AUGMENTATION.BRIGHTNESS", "AUGMENTATION.CONTRAST", "AUGMENTATION.SATURATION",
    "AUGMENTATION.HUE", "AUGMENTATION.GRAYSCALE", "RANDOM_SEED", "OUTPUT_DIR", "LOG_PERIOD",
    "TEST.CHECKPOINT_FILE_PATH", "SOLVER.BASE_LR", "SOLVER.LRS", "SOLVER.STEPS_ITER", "SOLVER.MAX_EPOCH",
    "SOLVER.WARMUP_START_LR")}
SAME.update({"DATA_LOADER.NUM_WORKERS": "DATA.NUM_WORKERS", "DATA_LOADER.PIN_MEMORY": "DATA.PIN_MEMORY",
             "TEST.PROMPT": "VIDEO.HEAD.PROMPT_TEMPLATE"})

NEVER_READ = "never read by the lineage's code"
NOT_FEW_SHOT = "read only by the lineage's classification, localization or pretraining code, never by a few-shot run"
# Keys dropped whatever their value, with the reason.
DROPPED = {
    "DATA.FPS": f"{NEVER_READ} (its frame window takes each video's fps from the reader; ours too)",
    "DATA.CLIP_INTERVAL": NEVER_READ, "DATA.SAMPLING_UNIFORM": NEVER_READ, "DATA.MINUS_INTERVAL": NEVER_READ,
    "SOLVER.MEAN": f"{NEVER_READ} (misplaced: the lineage's normalisation is DATA.MEAN/STD)",
    "SOLVER.STD": f"{NEVER_READ} (misplaced: the lineage's normalisation is DATA.MEAN/STD)",
    "SOLVER.WEIGHT_DECAY": f"{NEVER_READ}: its optimizer reads OPTIMIZER.WEIGHT_DECAY (translated)",
    "SOLVER.OPTIM_METHOD": f"{NEVER_READ}: its optimizer reads OPTIMIZER.OPTIM_METHOD (translated)",
    "SOLVER.MOMENTUM": f"{NEVER_READ}: its optimizer reads OPTIMIZER.*", "SOLVER.DAMPENING": NEVER_READ,
    "SOLVER.NESTEROV": NEVER_READ,
    "OPTIMIZER.BASE_LR": "replaced at every iteration by the SOLVER schedule's learning rate",
    "OPTIMIZER.LR_POLICY": "the schedule is SOLVER's", "OPTIMIZER.MAX_EPOCH": "the schedule is SOLVER's",
    "OPTIMIZER.WARMUP_EPOCHS": "the schedule is SOLVER's", "OPTIMIZER.WARMUP_START_LR": "the schedule is SOLVER's",
    "DATA.NORM_FEATURE": NOT_FEW_SHOT, "DATA.USE_AUG_FEATURE": NOT_FEW_SHOT, "DATA.AUG": NOT_FEW_SHOT,
    "DATA.LOAD_PROPS": NOT_FEW_SHOT, "DATA.TEMPORAL_SCALE": NOT_FEW_SHOT, "DATA.LABELS_TYPE": NOT_FEW_SHOT,
    "DATA.LOAD_TYPE": NOT_FEW_SHOT, "DATA.DOWNLOAD_FEATURE": NOT_FEW_SHOT, "DATA.NUM_INPUT_CHANNELS": NOT_FEW_SHOT,
    "DATA.ENSEMBLE_METHOD": NOT_FEW_SHOT, "TEST.TEST_SET": NOT_FEW_SHOT, "TEST.UPLOAD_CLASSIFIER_RESULTS": NOT_FEW_SHOT,
    "TEST.SPATIAL_CROPS": NOT_FEW_SHOT, "TRAIN.CHECKPOINT_PERIOD": f"{NOT_FEW_SHOT}: its few-shot loop checkpoints "
    "at every TRAIN.VAL_FRE_ITER, as ours does (TRAIN.CHECKPOINT_PERIOD 0)",
    "TRAIN.LOSS_FUNC": "its few-shot loop computes cross-entropy whatever this says, as ours does",
    "AUGMENTATION.RATIO": NOT_FEW_SHOT,
    "TRAIN.AUTO_RESUME": "a run resumes with --resume here, never implicitly (an existing run folder is refused)",
    "TRAIN.LOG_FILE": "log and config file names: here log.txt, config.yaml and metrics.jsonl in OUTPUT_DIR",
    "TEST.LOG_FILE": "log file name: here log.txt in OUTPUT_DIR", "OUTPUT_CFG_FILE": "here config.yaml in OUTPUT_DIR",
    "LOG_MODEL_INFO": "logging switch (the parameter count is always logged here)",
    "LOG_CONFIG_INFO": "logging switch (config.yaml is always written here)",
    "TEST.CHECKPOINT_TYPE": "our loader recognises CLIP-FSAR .pyth and our checkpoints by content",
    "TRAIN.CHECKPOINT_TYPE": "acts only with TRAIN.CHECKPOINT_FILE_PATH", "TRAIN.FINE_TUNE": "acts only with "
    "TRAIN.CHECKPOINT_FILE_PATH", "TRAIN.CHECKPOINT_INFLATE": "acts only with TRAIN.CHECKPOINT_FILE_PATH",
    "TRAIN.ONLY_LINEAR": "selects the parameters named `head`: in CLIP-FSAR's model that is every one",
    "TRAIN.NUM_SAMPLES": "the training list's nominal length; the loop stops at TRAIN.NUM_TRAIN_TASKS first",
    "DATA_LOADER.ENABLE_MULTI_THREAD_DECODE": "decoding runs in the DATA.NUM_WORKERS loader workers here",
    "DATA_LOADER.COLLATE_FN": "one episode per item here, never collated",
    "VIDEO.HEAD.NUM_CLASSES": "not read by CNN_OTAM_CLIPFSAR", "VIDEO.HEAD.DROPOUT_RATE": "not read by "
    "CNN_OTAM_CLIPFSAR", "VIDEO.HEAD.ACTIVATION": "not read by CNN_OTAM_CLIPFSAR",
    "BN.EPS": "for BatchNorm layers the lineage builds; CLIP's keep their own",
    "BN.MOMENTUM": "for BatchNorm layers the lineage builds; CLIP's keep their own",
    "BN.WEIGHT_DECAY": "behaves differently: the lineage exempts parameters whose names contain `bn` or `norm` (RN50's "
    "BatchNorm, the temporal transformer's LayerNorms) from weight decay; every trainable parameter decays here",
    "AUGMENTATION.NO_RANDOM_ERASE": "random erasing is off either way (AUGMENTATION.RANDOM_ERASING.ENABLE false)",
    "AUGMENTATION.USE_GPU": "where the lineage ran its transforms; no effect on the values",
    "SHARD_ID": "nodes and ranks come from torchrun or SLURM here", "NUM_SHARDS": "nodes come from torchrun or SLURM "
    "here", "PAI": "the lineage's cluster launcher", "DIST_BACKEND": "DIST_BACKEND auto here: nccl with CUDA, gloo "
    "without (the lineage's nccl fails on a CPU machine)",
}
# Sections whose keys act only when their ENABLE is true; off, every key of the section is dropped.
SWITCHED_SECTIONS = ("PRETRAIN", "LOCALIZATION", "DETECTION", "TENSORBOARD", "VISUALIZATION", "SUBMISSION", "OSS",
                     "PRE_DOWNLOAD", "MODEL.EMA", "AUGMENTATION.MIXUP", "AUGMENTATION.CUTMIX",
                     "AUGMENTATION.RANDOM_ERASING", "TRAIN.CHECKPOINT_PRE_PROCESS", "VIDEO.BACKBONE.NONLOCAL")
# Keys with the one value this project computes: dropped at it, refused at any other (with what the other means).
FIXED = {
    "TASK_TYPE": ("few_shot_action", "only few-shot runs are implemented here"),
    "TRAIN.META_BATCH": (True, "episodic training is what runs here"),
    "MODEL.NAME": ("BaseVideoModel", "CLIP-FSAR's model wrapper, the only one here"),
    "VIDEO.BACKBONE.META_ARCH": ("Identity", "CLIP-FSAR's CLIP lives in its head; the lineage's video backbone slot "
                                             "is empty"),
    "AUGMENTATION.COLOR_AUG": (False, "colour jitter on every training video: here only on training queries, "
                                      "AUGMENTATION.SUPPORT_QUERY_DIFF"),
    "AUGMENTATION.SSV2_FLIP": (False, "a flip that swaps SSv2's left/right labels: not implemented here"),
    "AUGMENTATION.LABEL_SMOOTHING": (0.0, "label smoothing: not implemented here"),
    "AUGMENTATION.CONSISTENT": (True, "one colour draw per video, as ours"),
    "AUGMENTATION.SHUFFLE": (True, "the four colour adjustments in a random order, as ours"),
    "AUGMENTATION.GRAY_FIRST": (True, "the grey conversion before them, as ours"),
    "AUGMENTATION.IS_SPLIT": (False, "one colour draw for the whole video, as ours"),
    "TRAIN.LR_REDUCE": (False, "a lower learning rate for fine-tuned groups: not implemented here"),
    "TRAIN.TRAIN_VAL_COMBINE": (False, "training on train + val: not implemented here"),
    "TRAIN.CHECKPOINT_FILE_PATH": ("", "starting training from a checkpoint's weights has no key here"),
    "TEST.NUM_ENSEMBLE_VIEWS": (1, "one view per video, as ours"),
    "TEST.NUM_SPATIAL_CROPS": (1, "one centre crop per video, as ours"),
    "TEST.ZERO_SHOT": (False, "zero-shot testing: not implemented here"),
    "DATA.MULTI_LABEL": (False, "single-label episodes, as ours"),
    "DATA.TEST_CENTER_CROP": (True, "the centre crop in test, as ours (it matters only with 3 crops)"),
    "BN.WB_LOCK": (False, "BatchNorm/LayerNorm weights are trained, as ours"),
    "BN.FREEZE": (False, "BatchNorm statistics update in training, as ours"),
    "BN.SYNC": (False, "no synchronised BatchNorm, as ours"), "BN.SYNC_BN": (False, "no synchronised BatchNorm"),
    "USE_MULTISEG_VAL_DIST": (False, "a multi-segment validation sampler for classification"),
    "OPTIMIZER.ADJUST_LR": (False, "learning-rate scaling for SGD/LARS pretraining"),
}
# Whole families dropped with one reason (prefix match).
DROPPED_PREFIXES = {
    "VIDEO.BACKBONE.": "the lineage's video backbone slot (META_ARCH Identity: CLIP-FSAR's CLIP lives in its head)",
    "VIDEO.DIM": "the lineage's localization backbone widths", "VIDEO.BACKBONE_": "the lineage's localization "
    "backbone layout",
}


# ---------------------------------------------------------------------------------------------- translations
def _benchmark(c: Conversion, chosen: str | None) -> str:
    anno = str(c.get("DATA.ANNO_DIR") or "")
    name = chosen or (os.path.basename(os.path.normpath(anno)) if anno else "")
    if name not in BENCHMARKS:
        raise ArgumentError(f"DATA.ANNO_DIR {anno!r}: cannot tell the benchmark from its folder name (the lineage's "
                            f"are {', '.join(BENCHMARKS)}): pass --benchmark")
    return name


def _dataset(c: Conversion, benchmark: str, anno_dir: str) -> None:
    entry, few, _ = BENCHMARKS[benchmark]
    for key in ("TRAIN.DATASET", "TEST.DATASET"):
        if c.has(key) and c.get(key) != "Ssv2_few_shot":
            c.refuse(key, "the lineage runs every few-shot benchmark through Ssv2_few_shot; no other is translated")
    if c.get("TRAIN.DATASET_FEW") != few:
        c.refuse("TRAIN.DATASET_FEW", f"the lineage's {benchmark} configs say {few!r}")
    c.set("DATA.DATASET", entry, f"CLIP-FSAR runs {benchmark} through its Ssv2_few_shot")
    c.translate(("TRAIN.DATASET", "TEST.DATASET", "TRAIN.DATASET_FEW"),
                f"DATA.DATASET {entry}: the lineage runs {benchmark} through its Ssv2_few_shot class "
                f"(TRAIN.DATASET_FEW only picks how split lines are parsed); ours has one entry per benchmark, whose "
                f"flip rules are the benchmark's (no flip on SSv2: its labels say left/right)")
    if benchmark.startswith("ssv2"):
        c.set("DATA.VIDEO_EXT", ".mp4", "CLIP-FSAR's Ssv2_few_shot reads <DATA_ROOT_DIR>/<id>.mp4")
        c.translated.append(((), "DATA.VIDEO_EXT .mp4: the lineage's Ssv2_few_shot reads <DATA_ROOT_DIR>/<video "
                                 "id>.mp4 (our shipped SSv2 configs read the official .webm)"))
    c.set("DATA.ANNO_DIR", anno_dir, f"holds the lineage's split lists ({c.get('DATA.ANNO_DIR')}) and class names")
    c.translate(("DATA.ANNO_DIR",),
                f"DATA.ANNO_DIR {anno_dir}: the lineage's lists ({c.get('DATA.ANNO_DIR')}) with class-name files "
                f"beside them, as python runs/prepare_splits.py --dataset {benchmark} --out {anno_dir} writes them "
                f"(the lineage reads train_few_shot.txt for training and test_few_shot.txt for everything else; here "
                f"val selects the checkpoint and test is tested once)")


def _class_names(c: Conversion, anno_dir: str) -> None:
    for key, split in (("TRAIN.CLASS_NAME", "train"), ("TEST.CLASS_NAME", "test")):
        if not c.has(key):
            continue
        names = c.get(key)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            c.refuse(key, "a list of class names")
            continue
        names_file = split_files(anno_dir, split)[1]
        if os.path.isfile(names_file):
            ours = read_class_names(names_file)
            if ours != names:
                first = next(i for i in range(max(len(ours), len(names))) if ours[i:i + 1] != names[i:i + 1])
                mine, theirs = (names[first:first + 1] or ["(none)"])[0], (ours[first:first + 1] or ["(none)"])[0]
                c.refuse(key, f"differs from {names_file} at name {first + 1}: {mine!r}, the file says {theirs!r}")
                continue
            state = f"the same {len(names)} names as {names_file}"
        else:
            state = f"{len(names)} names, to be read from {names_file} (not there yet)"
        c.translate((key,), f"{split} class names -> {names_file}: {state} (the lineage's val episodes used "
                            f"TEST.CLASS_NAME; here val reads val_class_names.txt)" if split == "test" else
                    f"{split} class names -> {names_file}: {state}")


def _frame_sampling(c: Conversion) -> None:
    for key in ("DATA.SAMPLING_RATE_TRAIN", "DATA.SAMPLING_RATE_TEST"):
        if c.has(key):
            c.refuse(key, "split-specific sampling rates are not translated")
    if c.get("DATA.SAMPLING_MODE", "interval_based") != "interval_based":
        c.refuse("DATA.SAMPLING_MODE", "only interval_based, CLIP-FSAR's few-shot sampling, is translated")
    rate = c.get("DATA.SAMPLING_RATE")
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        c.refuse("DATA.SAMPLING_RATE", "a positive integer")
        return
    if rate > 40:
        c.set("DATA.FRAME_SAMPLING", "segment", f"CLIP-FSAR SAMPLING_RATE {rate} (> 40: one frame per segment)")
        c.translate(("DATA.SAMPLING_RATE", "DATA.SAMPLING_MODE", "DATA.TARGET_FPS"),
                    "DATA.FRAME_SAMPLING segment: above 40 the lineage ignores the rate and takes one random frame "
                    "from each of NUM_INPUT_FRAMES equal segments (test frames: the segment centres here, "
                    "DATA.TEST_FRAMES; docs/lineage.md)")
        return
    if not c.has("DATA.TARGET_FPS"):
        c.refuse("DATA.SAMPLING_RATE", "a clip window needs DATA.TARGET_FPS, which the lineage's base files set")
        return
    fps = float(c.get("DATA.TARGET_FPS"))
    c.set("DATA.FRAME_SAMPLING", "clip", f"CLIP-FSAR SAMPLING_RATE {rate} (<= 40: a clip window)")
    c.set("DATA.SAMPLING_RATE", rate, "CLIP-FSAR DATA.SAMPLING_RATE")
    c.set("DATA.TARGET_FPS", fps, "CLIP-FSAR DATA.TARGET_FPS")
    c.translate(("DATA.SAMPLING_RATE", "DATA.SAMPLING_MODE", "DATA.TARGET_FPS"),
                f"DATA.FRAME_SAMPLING clip, SAMPLING_RATE {rate}, TARGET_FPS {fps:g}: the lineage's window of "
                f"NUM_INPUT_FRAMES x {rate} x the video's fps / {fps:g} frames, random start in training, middle "
                f"in test")


def _lineage_epoch(iteration: int, steps_iter: int, folds: float) -> float:
    """The epoch CLIP-FSAR's few-shot loop hands its schedule at an iteration (runs/train_net_few_shot.py:
    `cur_iter // STEPS_ITER + NUM_FOLDS * cur_iter / STEPS_ITER`)."""
    return iteration // steps_iter + folds * iteration / steps_iter


def _first_iteration_at(epoch: float, steps_iter: int, folds: float) -> int:
    """The first iteration whose lineage epoch reaches `epoch`."""
    q = 0
    while True:
        need = max(0.0, (epoch - q * (1 + folds)) * steps_iter / folds)  # iterations into this unit
        if need < steps_iter:
            return q * steps_iter + math.ceil(need - 1e-9)
        q += 1


def _schedule(c: Conversion) -> None:
    policy, folds = c.get("SOLVER.LR_POLICY"), c.get("TRAIN.NUM_FOLDS", 1)
    steps_iter, steps = c.get("SOLVER.STEPS_ITER"), c.get("SOLVER.STEPS", [0])
    if policy != "steps_with_relative_lrs":
        c.refuse("SOLVER.LR_POLICY", "the lineage's few-shot schedule runs on the epoch floor(i/STEPS_ITER) + "
                                     "NUM_FOLDS*i/STEPS_ITER, which only its step policy survives; only "
                                     "steps_with_relative_lrs is translated")
        return
    if not (isinstance(folds, (int, float)) and folds > 0 and isinstance(steps_iter, int) and steps_iter > 0):
        c.refuse("TRAIN.NUM_FOLDS", "with SOLVER.STEPS_ITER, positive numbers")
        return
    ours_steps = []
    for step in steps:
        at = _first_iteration_at(float(step), steps_iter, float(folds)) / steps_iter
        ours_steps.append(int(at) if float(at).is_integer() else at)
    warmup = float(c.get("SOLVER.WARMUP_EPOCHS", 0))
    if warmup > folds:
        c.refuse("SOLVER.WARMUP_EPOCHS", "a warm-up longer than TRAIN.NUM_FOLDS epochs is not linear in the "
                                         "iteration in the lineage's loop")
        return
    c.set("SOLVER.LR_POLICY", policy, "CLIP-FSAR SOLVER.LR_POLICY")
    c.set("SOLVER.STEPS", ours_steps, f"CLIP-FSAR SOLVER.STEPS {show(steps)} at its epoch floor(i/S) + "
                                      f"{folds:g}*i/S")
    c.set("SOLVER.WARMUP_EPOCHS", warmup / folds, f"CLIP-FSAR SOLVER.WARMUP_EPOCHS {warmup:g}, NUM_FOLDS {folds:g}")
    c.translate(("SOLVER.LR_POLICY", "SOLVER.STEPS", "SOLVER.WARMUP_EPOCHS", "TRAIN.NUM_FOLDS"),
                f"SOLVER.STEPS {show(ours_steps)}, WARMUP_EPOCHS {warmup / folds:g}: the lineage's few-shot loop "
                f"hands its schedule the epoch floor(i/STEPS_ITER) + NUM_FOLDS*i/STEPS_ITER (NUM_FOLDS {folds:g}), "
                f"so its steps {show(steps)} fall at iterations {show([round(s * steps_iter) for s in ours_steps])}; "
                f"here the epoch is i/STEPS_ITER")


def _optimizer(c: Conversion) -> None:
    method = c.get("OPTIMIZER.OPTIM_METHOD", "adam")
    if method not in ("adam", "sgd"):
        c.refuse("OPTIMIZER.OPTIM_METHOD", "adam and sgd are translated")
        return
    if c.has("OPTIMIZER.OPTIM_METHOD"):
        c.set("SOLVER.OPTIM_METHOD", method, "CLIP-FSAR OPTIMIZER.OPTIM_METHOD (what its optimizer reads)")
    if c.has("OPTIMIZER.WEIGHT_DECAY"):
        decay = float(c.get("OPTIMIZER.WEIGHT_DECAY"))
        c.set("SOLVER.WEIGHT_DECAY", decay, "CLIP-FSAR OPTIMIZER.WEIGHT_DECAY (what its optimizer reads)")
    written = ", ".join(f"{key} {show(c.ours[key][0])}" for key in ("SOLVER.OPTIM_METHOD", "SOLVER.WEIGHT_DECAY")
                        if key in c.ours)
    c.translate(("OPTIMIZER.OPTIM_METHOD", "OPTIMIZER.WEIGHT_DECAY"),
                f"{written}: the lineage's optimizer reads the OPTIMIZER section (its SOLVER.WEIGHT_DECAY is never "
                f"read; L2 weight decay, as our adam)")
    if method == "adam":
        for key in ("OPTIMIZER.MOMENTUM", "OPTIMIZER.DAMPENING", "OPTIMIZER.NESTEROV"):
            c.drop(key, "not read by the lineage's Adam, whose betas are (0.9, 0.999): our SOLVER.MOMENTUM 0.9")
    else:
        c.map("OPTIMIZER.MOMENTUM", "SOLVER.MOMENTUM")
        c.map("OPTIMIZER.DAMPENING", "SOLVER.DAMPENING")
        c.map("OPTIMIZER.NESTEROV", "SOLVER.NESTEROV")


def _views(c: Conversion) -> None:
    scales, test_scale = c.get("DATA.TRAIN_JITTER_SCALES"), c.get("DATA.TEST_SCALE")
    if isinstance(scales, list) and len(scales) == 2 and scales[0] == scales[1]:
        c.map("DATA.TRAIN_JITTER_SCALES")
    elif scales is not None:
        c.refuse("DATA.TRAIN_JITTER_SCALES", "the lineage squashes training frames to height x width = these two "
                                             "values; here a square side is drawn from them, so only equal ones "
                                             "mean the same")
    if isinstance(test_scale, int):
        c.map("DATA.TEST_SCALE")
    elif test_scale is not None:
        c.refuse("DATA.TEST_SCALE", "one side (the lineage squashes test frames to side x side)")
    if c.has("AUGMENTATION.RANDOM_FLIP"):
        c.set("DATA.FLIP", bool(c.get("AUGMENTATION.RANDOM_FLIP")), "CLIP-FSAR AUGMENTATION.RANDOM_FLIP")
        c.translate(("AUGMENTATION.RANDOM_FLIP",), "DATA.FLIP: the flip of training videos")


def _normalisation(c: Conversion) -> None:
    mean, std = c.get("DATA.MEAN", CLIP_MEAN), c.get("DATA.STD", CLIP_STD)
    if [round(float(v), 6) for v in [*mean, *std]] == [round(v, 6) for v in CLIP_MEAN + CLIP_STD]:
        c.map("DATA.MEAN")
        c.map("DATA.STD")
        return
    c.set("DATA.MEAN", list(CLIP_MEAN), f"CLIP's (CLIP-FSAR DATA.MEAN {show(mean)}: see the note above)")
    c.set("DATA.STD", list(CLIP_STD), f"CLIP's (CLIP-FSAR DATA.STD {show(std)}: see the note above)")
    c.translate(("DATA.MEAN", "DATA.STD"),
                f"DATA.MEAN/STD CLIP's, not the lineage's {show(mean)} / {show(std)}: the CLIP towers were trained "
                f"with CLIP's normalisation and a CLIP backbone is refused with another here (the lineage's value "
                f"comes from its base files: this config's own MEAN/STD, if any, sit where nothing reads them)")
    c.notes.append(f"this config normalises with {show(mean)} / {show(std)} in CLIP-FSAR, not with CLIP's: the "
                   f"conversion uses CLIP's (behaves differently)")


def _test_and_head(c: Conversion) -> None:
    if c.has("TEST.ENABLE"):
        c.set("TEST.ENABLE", True, f"CLIP-FSAR TEST.ENABLE {show(c.get('TEST.ENABLE'))}: see the note above")
        c.translate(("TEST.ENABLE",), f"TEST.ENABLE true (was {show(c.get('TEST.ENABLE'))}): the lineage's reported "
                                      f"accuracy is its in-training evaluation on the test list (every "
                                      f"VAL_FRE_ITER, TRAIN.NUM_TEST_TASKS episodes); TEST.ENABLE only added a "
                                      f"second pass. Here val episodes (TRAIN.NUM_VAL_TASKS) select best.pth and "
                                      f"the test split is tested once, at the end")
    if c.get("TEST.AUTOMATIC_MULTI_SCALE_TEST") and c.get("TEST.ENABLE"):
        c.refuse("TEST.AUTOMATIC_MULTI_SCALE_TEST", "a multi-view test pass: not implemented here")
    if c.has("TRAIN.EVAL_PERIOD") and not c.get("TRAIN.EVAL_PERIOD"):
        c.refuse("TRAIN.EVAL_PERIOD", "0 builds no evaluation loader, and the lineage's loop fails at its first "
                                      "VAL_FRE_ITER")
    c.drop("TRAIN.EVAL_PERIOD", "the lineage's few-shot loop reads it only as 'evaluate at all' (non-zero); it "
                                "evaluates every TRAIN.VAL_FRE_ITER iterations, as ours does")
    c.drop("TEST.AUTOMATIC_MULTI_SCALE_TEST", "acts only on a separate test pass (TEST.ENABLE), off or unused")
    if c.has("TRAIN.TEXT_COFF"):
        coff = c.get("TRAIN.TEXT_COFF")
        c.set("TRAIN.TEXT_COFF", coff or 0.9, f"CLIP-FSAR TRAIN.TEXT_COFF {show(coff)}")
        c.translate(("TRAIN.TEXT_COFF",), f"TRAIN.TEXT_COFF {coff or 0.9}" + ("" if coff else
                                          " (the lineage reads 0 as 0.9 through a truthiness check)"))
    if c.has("TRAIN.TRANSFORMER_DEPTH"):
        depth = c.get("TRAIN.TRANSFORMER_DEPTH")
        c.set("TRAIN.TRANSFORMER_DEPTH", int(depth or 1), f"CLIP-FSAR TRAIN.TRANSFORMER_DEPTH {show(depth)}")
        c.translate(("TRAIN.TRANSFORMER_DEPTH",), f"TRAIN.TRANSFORMER_DEPTH {int(depth or 1)}" + (
            "" if depth else " (the lineage reads 0 as 1)"))
    if c.get("VIDEO.HEAD.NAME") != "CNN_OTAM_CLIPFSAR":
        c.refuse("VIDEO.HEAD.NAME", "only the CLIP-FSAR head is translated (MCDP_FSAR builds on it: configs/projects/"
                                    "MCDPFSAR)")
    c.map("VIDEO.HEAD.NAME")
    if c.get("VIDEO.HEAD.BACKBONE_NAME") not in ("RN50", "ViT-B/16"):
        c.refuse("VIDEO.HEAD.BACKBONE_NAME", "CLIP-FSAR's backbones are RN50 and ViT-B/16")
    else:
        c.map("VIDEO.HEAD.BACKBONE_NAME")


def _gpus(c: Conversion, out: str) -> None:
    gpus = c.get("NUM_GPUS", 1)
    launch = (f"torchrun --nproc_per_node={gpus} runs/run.py --cfg {out}" if isinstance(gpus, int) and gpus > 1
              else f"python runs/run.py --cfg {out}")
    c.drop("NUM_GPUS", f"processes come from the launcher here: {launch} runs the lineage's {gpus} (one episode "
                       f"each per iteration, as there)")
    for key in ("TRAIN.BATCH_SIZE", "TEST.BATCH_SIZE"):
        c.drop(key, "episodes per iteration = GPUs, one each, as there; the lineage also divides the loss by "
                    "TRAIN.BATCH_SIZE on top of DDP's averaging, which here averages only (docs/lineage.md)")


def _switched_sections(c: Conversion) -> None:
    for section_name in SWITCHED_SECTIONS:
        keys = [k for k in c.lineage if k.startswith(section_name + ".") and k not in c.done]
        if not keys:
            continue
        enable = f"{section_name}.ENABLE"
        if c.get(enable):
            c.refuse(enable, "not implemented here")
            continue
        for key in keys:
            c.drop(key, f"{section_name} is off ({enable} false)" if c.has(enable) else
                   f"{section_name} acts only when {enable} is true")


def convert(lineage: dict[str, Any], benchmark: str | None, anno_dir: str | None, out: str) -> tuple[Conversion, str]:
    """Account for every lineage key (see the module docstring); returns the conversion and the benchmark."""
    c = Conversion(dict(lineage))
    name = _benchmark(c, benchmark)
    anno = anno_dir or f"data/splits/{name}"
    _dataset(c, name, anno)
    _class_names(c, anno)
    _frame_sampling(c)
    _schedule(c)
    _optimizer(c)
    _views(c)
    _normalisation(c)
    _test_and_head(c)
    _gpus(c, out)
    _switched_sections(c)
    for key, ours in SAME.items():
        c.map(key, ours)
    for key, (value, why) in FIXED.items():
        if key in c.lineage and key not in c.done:
            if c.get(key) == value:
                c.drop(key, f"{show(value)}: {why}")
            else:
                c.refuse(key, f"only {show(value)} is translated: {why}")
    for key, reason in DROPPED.items():
        c.drop(key, reason)
    for key in list(c.lineage):
        for prefix, reason in DROPPED_PREFIXES.items():
            if key.startswith(prefix):
                c.drop(key, reason)
    unknown = [k for k in c.lineage if k not in c.done]
    if unknown or c.refused:
        parts = ([f"{len(unknown)} key{'s' if len(unknown) > 1 else ''} this converter does not know: "
                  f"{', '.join(unknown)}"] if unknown else []) + ([f"cannot express {'; '.join(c.refused)}"]
                                                                  if c.refused else [])
        raise ConfigError("; ".join(parts) + " (nothing written; remove or change them in a copy of the file)")
    return c, name
