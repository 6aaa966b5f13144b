"""Train and test a few-shot head: `python runs/run.py --cfg configs/...yaml [--resume] [KEY VALUE ...]`.

Single process, `NUM_GPUS > 1` (spawned local processes), `torchrun`, or SLURM (`srun python runs/run.py ...`).
Rank 0 checks the config, takes `OUTPUT_DIR/run.lock` (held for the whole run), then checks the run folder, the
resume config and the data before it writes anything else: a second job can never pass the folder check while
the first prepares its data. Under torchrun/SLURM every other node then checks the data it sees, and all ranks
agree on every refusal before training starts (one line, one exit code on every rank). SIGTERM/SIGUSR1/Ctrl-C stop
training at the next optimizer step with `last.pth` saved (exit 10); `--resume` continues exactly.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import simplejson as json
import torch

if __package__ in (None, ""):  # `python runs/run.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DATASET_REGISTRY  # noqa: E402
from datasets.checks import check_run_data, check_same_data, tested_share, write_effective_lists  # noqa: E402
from models.backbones import check_pretrained  # noqa: E402
from runs.config import config_from_yaml_text, get_cfg, load_config  # noqa: E402
from runs.engine_utils import STOP  # noqa: E402
from runs.pretrain_clip import check_pretrain_writable, ensure_pretrained  # noqa: E402
from runs.test_net_few_shot import check_test_config, evaluate, model_for_test  # noqa: E402
from runs.train_net_few_shot import check_train_config, train  # noqa: E402
from utils import distributed as du  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.config import CfgNode, ConfigError, all_keys  # noqa: E402
from utils.errors import ArgumentError, PreemptedError, RunFolderError, UserError, entry_point  # noqa: E402
from utils.logger import get_logger, setup_logging  # noqa: E402
from utils.run_lock import RunLock  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402

logger = get_logger("run")

USAGE = ("usage: python runs/run.py --cfg FILE [--resume] [--allow-change KEY[,KEY...]] [--debug] [KEY VALUE ...]\n"
         "  flags may stand anywhere, also between or after the KEY VALUE pairs")

# Keys a `--resume` may change without being named: none of them changes what is trained or how.
RESUME_FREE_KEYS = (
    "OUTPUT_DIR",  # the run folder moved; it is where we resume from
    "LOG_PERIOD",  # how often the loss is logged (metrics.jsonl gets more or fewer train/loss lines)
    "TRAIN.NUM_TRAIN_TASKS",  # train longer: the schedule is set by SOLVER, episode i is the same for any length
    "TRAIN.CHECKPOINT_PERIOD",  # how often `last.pth` is written; saving reads no RNG and changes no state
    "TRAIN.NUM_TEST_TASKS",  # the final test runs after training
    "TEST.ENABLE",  # whether the final test runs
    "TEST.CHECKPOINT_FILE_PATH",  # which weights the final test reads
    "TEST.CACHE_DEVICE",  # where cached features live; moving a tensor changes no value
)
# Not free although they look like test settings: TEST.FEATURE_CACHE and TEST.CACHE_SIZE also drive validation,
# and with DATA.TEST_FRAMES random they change its numbers (a cached video keeps one draw), hence `best`.

# The files that make a folder hold a run (a fresh start there is refused): what a start that failed early lacks.
RUN_FILES = ("checkpoints/last.pth", "checkpoints/best.pth", "results.json")

# Keys whose new value a resume could not honour: the optimizer and schedule state come from the checkpoint.
RESUME_FIXED_PREFIXES = ("SOLVER.",)


@dataclass
class Args:
    cfg_file: str
    resume: bool = False
    allow_change: list[str] = field(default_factory=list)
    opts: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> Args:
    """Flags anywhere (`--flag VALUE` or `--flag=VALUE`); every other token is part of the KEY VALUE pairs."""
    cfg_file, resume, allow, opts = None, False, [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        if name in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if name == "--resume" and not eq:
            resume = True
        elif name in ("--cfg", "--allow-change"):
            if not eq:
                i += 1
                inline = argv[i] if i < len(argv) else ""
            if not inline or inline.startswith("--"):
                raise ArgumentError(f"command line: {name} needs a value ({USAGE.splitlines()[0]})")
            if name == "--cfg" and cfg_file is not None:
                raise ConfigError(f"command line: --cfg given twice ({cfg_file}, then {inline}) (give one config "
                                  f"file; a config builds on another with _BASE_)")
            if name == "--cfg":
                cfg_file = inline
            else:
                allow.extend(k for k in inline.split(",") if k)
        elif token.startswith("--"):
            raise ArgumentError(f"command line: unknown flag {token} (flags: --cfg, --resume, --allow-change, "
                                f"--debug; config overrides are KEY VALUE pairs without dashes)")
        else:
            opts.append(token)
        i += 1
    if cfg_file is None:
        raise ArgumentError(f"command line: --cfg FILE is required ({USAGE.splitlines()[0]})")
    check_pairs(opts)
    return Args(cfg_file, resume, allow, opts)


def check_pairs(opts: list[str]) -> None:
    """An odd count of override tokens: name the KEY that has no VALUE; a KEY given twice: name it (the later value
    would win silently, as a YAML file's duplicate key is refused)."""
    if len(opts) % 2 == 0:
        first: dict[str, str] = {}
        for key, value in zip(opts[0::2], opts[1::2], strict=True):
            if key in first:
                raise ConfigError(f"command line: {key} given twice ({first[key]}, then {value}) (give each key "
                                  f"once)")
            first[key] = value
        return
    keys = set(all_keys(get_cfg()))
    for i in range(0, len(opts) - 1, 2):
        if opts[i + 1] in keys:  # a key where its predecessor's value should be
            missing = opts[i]
            break
    else:
        missing = opts[-1]
    raise ConfigError(f"command line: {missing} has no value (overrides are KEY VALUE pairs)")


def flatten(cfg: CfgNode, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _free(key: str, allowed: list[str]) -> bool:
    return key in allowed or key in RESUME_FREE_KEYS


def compare_resume_config(cfg: CfgNode, state: dict, path: str, allowed: list[str]) -> list[str]:
    """Refuse a resume whose config differs from the checkpoint's, except in free or allowed keys.

    Returns the accepted changes as `KEY old -> new` lines (for the log)."""
    known = set(all_keys(cfg))
    for key in allowed:
        if key not in known:
            raise ArgumentError(f"--allow-change: unknown config key {key}")
        if key.startswith(RESUME_FIXED_PREFIXES):
            raise ArgumentError(f"--allow-change: {key} cannot change on resume: the optimizer and learning-rate "
                                f"schedule are restored from {path} (start a new OUTPUT_DIR to train with it)")
    if not state.get("config"):
        logger.warning("%s holds no config; the resumed config cannot be checked against it", path)
        return []
    try:
        old = flatten(config_from_yaml_text(state["config"]))
    except ConfigError as e:
        raise RunFolderError(f"{path}: its stored config no longer loads ({e}) (resume with the code version that "
                             f"wrote it)") from None
    new = flatten(cfg)
    changed = [k for k in new if k in old and old[k] != new[k]]
    refused = [k for k in changed if not _free(k, allowed)]
    if refused:
        shown = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in refused)
        raise RunFolderError(f"{path}: --resume with a changed config: {shown} (resume with the checkpoint's values, "
                             f"start a new OUTPUT_DIR, or accept with --allow-change {','.join(refused)})")
    fixed = [k for k in changed if k.startswith(RESUME_FIXED_PREFIXES)]
    if fixed:  # only reachable through RESUME_FREE_KEYS, which holds no SOLVER key; kept as a guard
        raise RunFolderError(f"{path}: {fixed[0]} cannot change on resume")
    iteration = state.get("iteration", 0)
    if cfg.TRAIN.ENABLE and cfg.TRAIN.NUM_TRAIN_TASKS < iteration:
        raise RunFolderError(f"TRAIN.NUM_TRAIN_TASKS: {cfg.TRAIN.NUM_TRAIN_TASKS} is below the checkpoint's "
                             f"iteration {iteration} ({path}) (give at least {iteration})")
    return [f"{k} {old[k]!r} -> {new[k]!r}" for k in changed]


def check_output_dir(cfg: CfgNode, resume: bool, allowed: list[str] = ()) -> list[str]:
    """Refuse to mix two runs in one folder; refuse to resume from nothing or with a changed config.

    Reads only; returns the accepted config changes of a resume."""
    out = cfg.OUTPUT_DIR
    last, best = (os.path.join(out, "checkpoints", f"{name}.pth") for name in ("last", "best"))
    if resume:
        if not os.path.isfile(last):
            if os.path.isfile(best):
                raise RunFolderError(f"{last}: no checkpoint to resume from, but {best} is there (to continue from "
                                     f"it: cp {best} {last}, then --resume; training goes on from best's "
                                     f"iteration)")
            raise RunFolderError(f"{last}: no checkpoint to resume from (start without --resume, or set "
                                 f"OUTPUT_DIR to the run to continue)")
        return compare_resume_config(cfg, load_checkpoint(last), last, list(allowed))
    # A run is what would be lost: a checkpoint or results. A start that failed before its first checkpoint (a bad
    # video, a config error found when the model is built) leaves only config.yaml and logs: nothing to resume, so
    # refusing a fresh start would leave the folder usable by nobody.
    run = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if run:
        raise RunFolderError(f"{out}: OUTPUT_DIR already holds a run ({', '.join(run)}) (pass --resume to "
                             f"continue it or set OUTPUT_DIR to a new folder)")
    left = [f for f in ("config.yaml", "metrics.jsonl") if os.path.exists(os.path.join(out, f))]
    if left:
        logger.warning("%s: a start that ended before its first checkpoint left %s; starting afresh (config.yaml "
                       "and metrics.jsonl are written again, log.txt goes on)", out, " and ".join(left))
    return []


def check_run_config(cfg: CfgNode) -> None:
    """Combinations that would silently run something other than what the config says."""
    if cfg.VFAM.ENABLE and not cfg.DATA.TRACK_DIR:
        raise ConfigError("VFAM.ENABLE: needs DATA.TRACK_DIR (track files from runs/extract_tracks.py); without "
                          "tracks every video would take the baseline path (set DATA.TRACK_DIR or VFAM.ENABLE False)")
    check_test_config(cfg)
    if cfg.DATA.TEST_FRAMES == "random" and cfg.TEST.FEATURE_CACHE:
        raise ConfigError("DATA.TEST_FRAMES random: the feature cache would keep one draw of frames per video for "
                          "every episode (set TEST.FEATURE_CACHE False with it)")
    if cfg.TRAIN.VIDEO_TEXT_TARGETS == "orthogonal":
        uses_text = [k for k, on in (("TRAIN.EVAL_TEXT", cfg.TRAIN.EVAL_TEXT), ("TRAIN.COMBINE", cfg.TRAIN.COMBINE),
                                     ("AMCAP.ENABLE", cfg.AMCAP.ENABLE)) if on]
        if uses_text:
            raise ConfigError(f"TRAIN.VIDEO_TEXT_TARGETS orthogonal: {', '.join(uses_text)} needs video embeddings "
                              f"trained towards the class texts (set TRAIN.VIDEO_TEXT_TARGETS class_text or turn "
                              f"{' and '.join(uses_text)} off)")
    check_head_sections(cfg)
    check_train_config(cfg)


def check_head_sections(cfg: CfgNode) -> None:
    """A head-specific section set away from its defaults under a head that does not read it (e.g. AMCAP.ENABLE True
    under CNN_OTAM_CLIPFSAR, which would run the baseline) is a config error naming the keys."""
    from models.build import HEAD_REGISTRY
    from models.heads.base import FewShotHead

    head = HEAD_REGISTRY.get(cfg.VIDEO.HEAD.NAME, "VIDEO.HEAD.NAME")
    defaults = get_cfg()
    unread = [s for s in FewShotHead.HEAD_SECTIONS if s not in head.reads_sections]
    changed = [f"{s}.{k}" for s in unread for k, v in cfg[s].items() if v != defaults[s][k]]
    if changed:
        sections = sorted({key.split(".")[0] for key in changed})
        readers = sorted(name for name, cls in HEAD_REGISTRY
                         if any(s in cls.reads_sections for s in sections))
        raise ConfigError(f"{', '.join(changed)}: VIDEO.HEAD.NAME {cfg.VIDEO.HEAD.NAME} does not read "
                          f"{' or '.join(sections)} (it would run without them; use a head that does, "
                          f"{' or '.join(readers)}, or drop the keys)")


def run_worker(cfg_yaml: str, resume: bool, changes: tuple[str, ...] = (), data: dict | None = None,
               failure: UserError | None = None) -> dict | None:
    """One process: initialise distributed, agree on the start-up checks, train, test, write results (rank 0).

    `failure`: rank 0's refusal before the process group existed, under torchrun/SLURM (the other ranks wait in the
    group for rank 0; they learn the refusal and end with the same line)."""
    cfg = config_from_yaml_text(cfg_yaml)
    du.init_from_env(cfg.DIST_BACKEND)
    try:
        check_every_node(cfg, data, failure)
        STOP.install()
        try:
            return _run(cfg, resume, changes, data)
        finally:
            STOP.restore()
    finally:
        du.destroy()


def check_every_node(cfg: CfgNode, data: dict | None, failure: UserError | None = None) -> None:
    """Collective start-up checks, before the run's first other collective. Rank 0 checked the data before the group
    existed; under torchrun or SLURM the first rank of every other node (LOCAL_RANK 0) checks the data and weights it
    sees itself, and they must equal rank 0's: node-local copies, or a relative DATA.DATA_ROOT_DIR read from each
    node's working folder, can differ, and a rank that met a missing video mid-run left rank 0 in a collective (a
    gloo traceback burying the rank's one line). Any refusal ends every rank with the same line and exit code."""
    reference = du.broadcast_object(data)  # rank 0's counts (spawned ranks were handed them already)
    if failure is None and du.get_rank() != 0 and du.get_local_rank() == 0:
        try:
            seen = check_run_data(cfg)
            check_pretrained(cfg.VIDEO.HEAD.BACKBONE_NAME, cfg.VIDEO.HEAD.PRETRAINED)
            if reference is not None:
                check_same_data(cfg, reference, seen)
        except UserError as err:
            failure = err
    du.agree_on_failure(failure)


def _run(cfg: CfgNode, resume: bool, changes: tuple[str, ...] = (), data: dict | None = None) -> dict | None:
    device = du.pick_device(cfg.DEVICE)
    setup_logging(cfg.OUTPUT_DIR)
    if du.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(cfg.dump())
        if cfg.DATA.ON_MISSING_VIDEO == "drop":  # the lists the episodes are drawn from: part of the record
            write_effective_lists(cfg, os.path.join(cfg.OUTPUT_DIR, "splits"))
    logger.info("run in %s on %s, world size %d", cfg.OUTPUT_DIR, device, du.get_world_size())
    for change in changes:
        logger.warning("resume with a changed config (accepted): %s", change)
    for split, counts in (data or {}).items():
        if split != "seconds":
            logger.info("data %s: %s", split, ", ".join(f"{k} {v}" for k, v in counts.items() if v is not None))
    if cfg.DETERMINISTIC:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.RANDOM_SEED)
    start = time.time()
    trainer = train(cfg, device, resume) if cfg.TRAIN.ENABLE else None
    if not cfg.TEST.ENABLE:
        return None
    model, checkpoint = model_for_test(cfg, device, trainer)
    result = evaluate(model, cfg, "test", cfg.TRAIN.NUM_TEST_TASKS, device, stop=_stop_during_test(cfg, trainer))
    result.update(checkpoint=checkpoint, best_val_accuracy=trainer.best_acc if trainer else None,
                  skipped_steps=trainer.skipped_steps if trainer else 0, total_seconds=time.time() - start,
                  benchmark=tested_share((data or {}).get("test")), config=cfg.dump())
    if du.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "results.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print_summary(cfg, result)
    return result


def _stop_during_test(cfg: CfgNode, trainer):
    """What a stop signal during the final test raises: the test is cheap to redo, training is saved."""
    def stop() -> None:
        if not STOP.requested:
            return
        if trainer is not None:
            last = trainer.checkpointer.path("last")
            raise PreemptedError(f"{last}: stopped by {STOP.name} during the final test; training is complete and "
                                 f"saved (run the same command with --resume to test again)")
        raise PreemptedError(f"{cfg.OUTPUT_DIR}: test-only run stopped by {STOP.name} (nothing to resume: run it "
                             f"again with a new OUTPUT_DIR)")
    return stop


def print_summary(cfg: CfgNode, result: dict) -> None:
    out = cfg.OUTPUT_DIR
    lines = [
        "",
        "=" * 72,
        f"{cfg.VIDEO.HEAD.NAME} | {cfg.TRAIN.WAY}-way {cfg.TRAIN.SHOT_TEST or cfg.TRAIN.SHOT}-shot | "
        f"{result['episodes']} test episodes",
        f"test accuracy: {result['accuracy']:.2f} ± {result['ci95']:.2f} (95% CI)",
        f"best val accuracy: {result['best_val_accuracy']:.2f}" if result["best_val_accuracy"] is not None else "",
        f"replaced bad videos: {len(result['replaced_videos'])}   test videos without track files: "
        f"{result['videos_without_tracks']}   skipped non-finite steps: {result['skipped_steps']}",
        benchmark_line(cfg, result.get("benchmark")),
        f"time: {result['total_seconds']:.0f} s",
        f"outputs: {out}/ (results.json, metrics.jsonl, log.txt, config.yaml, checkpoints/, tensorboard/)",
        "=" * 72,
    ]
    print("\n".join(line for line in lines if line), flush=True)


def benchmark_line(cfg: CfgNode, share: dict | None) -> str:
    """The summary's word on how much of the listed test benchmark the episodes drew from."""
    if share is None:
        return ""
    if not share["partial"]:
        return f"benchmark: all {share['listed_videos']} listed test videos, {share['listed_classes']} classes"
    why = (f"DATA.ON_MISSING_VIDEO drop; the lists are in {cfg.OUTPUT_DIR}/splits/"
           if cfg.DATA.ON_MISSING_VIDEO == "drop" else "videos missing on disk were replaced")
    return (f"PARTIAL BENCHMARK: test episodes drew on {share['videos']} of {share['listed_videos']} listed videos "
            f"({100 * share['share_of_videos']:.1f} %) and {share['classes']} of {share['listed_classes']} classes "
            f"({why}): not comparable to full-benchmark results")


@entry_point
def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging()  # console only until the run folder is checked (an earlier in-process run's log.txt is closed)
    cfg = load_config(args.cfg_file, args.opts)
    check_run_config(cfg)
    du.env_from_slurm()
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun/SLURM ranks > 0: rank 0 holds the lock and checks the
        return run_worker(cfg.dump(), args.resume)  # folder; each node checks its data in check_every_node
    # Rank 0 (or the single process), before any process group exists: the lock, every check, then writes. The lock
    # comes first: checked before it, a folder could be taken by another job between the check and the lock.
    lock = RunLock(cfg.OUTPUT_DIR)  # a refusal below leaves the folder as it was (a new one is removed again)
    try:
        failure = None
        try:
            lock.acquire()
            changes, data = check_start(cfg, args)
        except UserError as err:
            if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
                raise
            failure = err  # torchrun/SLURM: the other ranks wait for this one in the process group; tell them
        if failure is not None:
            return run_worker(cfg.dump(), args.resume, failure=failure)
        if cfg.NUM_GPUS > 1 and "RANK" not in os.environ:
            du.launch(run_worker, cfg.NUM_GPUS, args=(cfg.dump(), args.resume, changes, data))
            path = os.path.join(cfg.OUTPUT_DIR, "results.json")
            return json.load(open(path)) if os.path.isfile(path) else None
        return run_worker(cfg.dump(), args.resume, changes, data)
    finally:
        lock.release()


def check_start(cfg: CfgNode, args: Args) -> tuple[tuple[str, ...], dict]:
    """Rank 0 under the lock: the run folder, what generation will write, the data (generated first where
    configured) and the weights; returns the accepted resume changes and the data counts."""
    changes = tuple(check_output_dir(cfg, args.resume, args.allow_change))
    dataset = DATASET_REGISTRY.get(cfg.DATA.DATASET, "DATA.DATASET")
    # Both folders generation writes (the synthetic data, the pretrained tiny CLIP) are checked before either
    # starts: pretraining takes minutes, and a read-only folder used to fail only when it saved.
    dataset.check_prepare(cfg)
    check_pretrain_writable(cfg)
    dataset.prepare(cfg)  # e.g. generate the synthetic benchmark (not into OUTPUT_DIR)
    # Rank 0 only: one scan of a shared file system instead of one per rank (SSv2-Full: 67k stats each); a refusal
    # here ends the job before any rank starts training (check_every_node tells the other ranks).
    data = check_run_data(cfg)
    ensure_pretrained(cfg)  # PRETRAIN.GENERATE: the tiny CLIP pretrained on the synthetic world, cached
    check_pretrained(cfg.VIDEO.HEAD.BACKBONE_NAME, cfg.VIDEO.HEAD.PRETRAINED)  # weights here (offline: a file)
    return changes, data


if __name__ == "__main__":
    main()
