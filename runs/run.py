"""Train and test a few-shot head: `python runs/run.py --cfg configs/...yaml [--resume] [KEY VALUE ...]`.

Single process, `NUM_GPUS > 1` (spawned local processes), `torchrun`, or SLURM (`srun python runs/run.py ...`).
"""
from __future__ import annotations

import argparse
import os
import time

import simplejson as json
import torch

from datasets import DATASET_REGISTRY
from runs.test_net_few_shot import evaluate
from runs.train_net_few_shot import load_weights_for_test, train
from utils import distributed as du
from utils.config import CfgNode, config_from_yaml_text, load_config
from utils.logger import get_logger, setup_logging
from utils.seeding import seed_everything

logger = get_logger("run")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config file")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUTPUT_DIR from checkpoints/last")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. TRAIN.SHOT 5")
    return parser.parse_args(argv)


def check_output_dir(cfg: CfgNode, resume: bool) -> None:
    """Refuse to mix two runs in one folder; refuse to resume from nothing."""
    out = cfg.OUTPUT_DIR
    last = os.path.join(out, "checkpoints", "last.pth")
    if resume:
        if not os.path.isfile(last):
            raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last}")
        return
    existing = [f for f in ("config.yaml", "checkpoints", "results.json", "metrics.jsonl")
                if os.path.exists(os.path.join(out, f))]
    if existing:
        raise FileExistsError(f"OUTPUT_DIR {out} already holds a run ({', '.join(existing)}); pass --resume to "
                              f"continue it or set OUTPUT_DIR to a new folder")


def check_run_config(cfg: CfgNode) -> None:
    """Combinations that would silently run something other than what the config says."""
    if cfg.VFAM.ENABLE and not cfg.DATA.TRACK_DIR:
        raise ValueError("VFAM.ENABLE needs DATA.TRACK_DIR (track files from runs/extract_tracks.py); without "
                         "tracks every video would take the baseline path")


def run_worker(cfg_yaml: str, resume: bool) -> dict | None:
    """One process: initialise distributed, train, test, write results (rank 0)."""
    cfg = config_from_yaml_text(cfg_yaml)
    du.init_from_env(cfg.DIST_BACKEND)
    try:
        return _run(cfg, resume)
    finally:
        du.destroy()


def _run(cfg: CfgNode, resume: bool) -> dict | None:
    device = du.pick_device(cfg.DEVICE)
    setup_logging(cfg.OUTPUT_DIR)
    if du.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(cfg.dump())
    logger.info("run in %s on %s, world size %d", cfg.OUTPUT_DIR, device, du.get_world_size())
    if cfg.DETERMINISTIC:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.RANDOM_SEED)
    start = time.time()
    trainer = train(cfg, device, resume) if cfg.TRAIN.ENABLE else None
    if not cfg.TEST.ENABLE:
        return None
    model, checkpoint = _model_for_test(cfg, device, trainer)
    result = evaluate(model, cfg, "test", cfg.TRAIN.NUM_TEST_TASKS, device)
    result.update(checkpoint=checkpoint, best_val_accuracy=trainer.best_acc if trainer else None,
                  skipped_steps=trainer.skipped_steps if trainer else 0, total_seconds=time.time() - start,
                  config=cfg.dump())
    if du.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "results.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print_summary(cfg, result)
    return result


def _model_for_test(cfg: CfgNode, device: torch.device, trainer) -> tuple[torch.nn.Module, str]:
    from models import build_model

    if cfg.TEST.CHECKPOINT_FILE_PATH:
        path = cfg.TEST.CHECKPOINT_FILE_PATH
    elif trainer is not None and trainer.checkpointer.has("best"):
        path = trainer.checkpointer.path("best")
    elif trainer is not None:
        return trainer.model, "last weights in memory (no validation ran)"
    else:
        raise ValueError("test-only run (TRAIN.ENABLE false) needs TEST.CHECKPOINT_FILE_PATH")
    model = trainer.model if trainer is not None else build_model(cfg).to(device)
    load_weights_for_test(model, path)
    return model, path


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
        f"time: {result['total_seconds']:.0f} s",
        f"outputs: {out}/ (results.json, metrics.jsonl, log.txt, config.yaml, checkpoints/, tensorboard/)",
        "=" * 72,
    ]
    print("\n".join(line for line in lines if line), flush=True)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    cfg = load_config(args.cfg_file, args.opts)
    check_run_config(cfg)
    du.env_from_slurm()
    if int(os.environ.get("RANK", "0")) == 0:  # before any process group exists: torchrun/SLURM rank or single
        check_output_dir(cfg, args.resume)
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        DATASET_REGISTRY.get(cfg.DATA.DATASET).prepare(cfg)  # e.g. generate the synthetic benchmark
    if cfg.NUM_GPUS > 1 and "RANK" not in os.environ:
        du.launch(run_worker, cfg.NUM_GPUS, args=(cfg.dump(), args.resume))
        path = os.path.join(cfg.OUTPUT_DIR, "results.json")
        return json.load(open(path)) if os.path.isfile(path) else None
    return run_worker(cfg.dump(), args.resume)


if __name__ == "__main__":
    main()
