"""Iteration-based episodic training (docs/design.md §7): one episode per iteration and rank, gradient accumulation,
validation on the val split selecting `best`, atomic `last`/`best` checkpoints and exact resume."""
from __future__ import annotations

import contextlib
import math
import os
import time

import torch

from datasets import build_loader
from models import build_model
from models.feature_cache import VideoFeatureCache
from runs.engine_utils import STOP, Progress, autocast, worker_episodes
from runs.test_net_few_shot import evaluate
from utils import distributed as du
from utils.checkpoint import Checkpointer, atomic_save, load_checkpoint, load_model_state, set_rng_state
from utils.config import NON_NEGATIVE, POSITIVE, CfgNode, ConfigError, one_of, rules, section
from utils.episode import Episode
from utils.errors import DivergedError, PreemptedError
from utils.logger import MetricsWriter, get_logger
from utils.solver import build_optimizer, build_scheduler

logger = get_logger(__name__)


def add_train_config(cfg: CfgNode) -> None:
    _T = section(cfg, "TRAIN")
    _T.ENABLE = True  # train before testing (false: test-only run)
    _T.NUM_TRAIN_TASKS = 30000  # training iterations; each is one episode per rank
    _T.BATCH_SIZE_PER_TASK = 4  # episodes whose gradients are accumulated per optimizer step
    _T.VAL_FRE_ITER = 1000  # validate (and checkpoint `last`, maybe `best`) every this many iterations
    _T.CHECKPOINT_PERIOD = 0  # extra `last` checkpoints every this many iterations (0: only at validation)
    _T.AUTOCAST = "none"  # none, bf16 (CPU and GPU) or fp16 (GPU, with a gradient scaler)
    _T.CLIP_GRAD_NORM = 0.0  # clip the global gradient norm to this (0: off)
    _T.MAX_BAD_STEPS = 5  # stop after this many consecutive non-finite losses (each one is skipped and counted)
    _T.FEATURE_CACHE = False  # frozen backbone + DATA.DETERMINISTIC_TRAIN: encode each train video once, reuse it
    _T.CACHE_SIZE = 100000  # videos kept in the training feature cache (least recently used are dropped)
    _T.CACHE_DEVICE = "cpu"  # where the training cache's features live: cpu (host memory) or model
    rules("TRAIN", NUM_TRAIN_TASKS=NON_NEGATIVE, BATCH_SIZE_PER_TASK=POSITIVE, VAL_FRE_ITER=POSITIVE,
          CHECKPOINT_PERIOD=NON_NEGATIVE, AUTOCAST=one_of("none", "bf16", "fp16"), CLIP_GRAD_NORM=NON_NEGATIVE,
          MAX_BAD_STEPS=POSITIVE, CACHE_SIZE=POSITIVE, CACHE_DEVICE=one_of("cpu", "model"))


def check_train_config(cfg: CfgNode) -> None:
    accum = cfg.TRAIN.BATCH_SIZE_PER_TASK
    for key in ("VAL_FRE_ITER", "CHECKPOINT_PERIOD"):
        if cfg.TRAIN[key] % accum:
            # Checkpoints are taken between optimizer steps so a resume never sees half-accumulated gradients.
            raise ConfigError(f"TRAIN.{key}: {cfg.TRAIN[key]} is not a multiple of TRAIN.BATCH_SIZE_PER_TASK "
                              f"({accum}) (checkpoints are taken between optimizer steps; choose a multiple)")


def check_train_cache(cfg: CfgNode, model: torch.nn.Module) -> None:
    """The training feature cache is exact only when a video always encodes to the same features."""
    if not cfg.TRAIN.FEATURE_CACHE:
        return
    if not cfg.DATA.DETERMINISTIC_TRAIN:
        raise ConfigError("TRAIN.FEATURE_CACHE needs DATA.DETERMINISTIC_TRAIN True (random views change features)")
    if any(p.requires_grad for p in model.backbone.parameters()):
        raise ConfigError("TRAIN.FEATURE_CACHE needs a frozen backbone (VIDEO.HEAD.FINETUNE frozen, text frozen)")
    if not model.supports_feature_cache:
        raise ConfigError(f"TRAIN.FEATURE_CACHE: head {type(model).__name__} does not support per-video features")


def train_episode_indices(start: int, stop: int) -> range:
    """Global episode index of iteration i on rank r of W is i*W + r: ranks never share an episode. A range, not a
    list: TRAIN.NUM_TRAIN_TASKS may be as large as a run could ever go (10**12) at no memory cost."""
    world, rank = du.get_world_size(), du.get_rank()
    return range(start * world + rank, stop * world + rank, world)


class Trainer:
    """Holds the training state; `run_step` is one iteration, `train` the loop."""

    def __init__(self, cfg: CfgNode, device: torch.device):
        check_train_config(cfg)
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg).to(device)
        check_train_cache(cfg, self.model)
        self.cache = None
        if cfg.TRAIN.FEATURE_CACHE:
            self.cache = VideoFeatureCache(cfg.TRAIN.CACHE_SIZE, "TRAIN.CACHE_SIZE", cfg.TRAIN.CACHE_DEVICE)
        self.optimizer = build_optimizer(self.model, cfg.SOLVER)
        self.scheduler = build_scheduler(self.optimizer, cfg.SOLVER, cfg.TRAIN.BATCH_SIZE_PER_TASK)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.TRAIN.AUTOCAST == "fp16")
        self.checkpointer = Checkpointer(os.path.join(cfg.OUTPUT_DIR, "checkpoints"))
        self.iteration, self.best_acc, self.bad_steps, self.skipped_steps = 0, -1.0, 0, 0
        self.best_iteration = -1  # iteration of the validation that wrote `best` (recorded in `last`)
        self.saved_at = -1  # iteration of the latest `last` checkpoint
        self.replaced_videos: set = set()
        self.ddp = self.model
        if du.get_world_size() > 1:
            # DDP checks every step for parameters without a gradient only where the head says some may have none
            # (models/heads/base.py: a ResNet tower with patch-map descriptors); elsewhere that graph walk is waste.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=self.model.may_leave_parameters_unused)

    # -- state ---------------------------------------------------------------------------------------
    def save(self, name: str) -> None:
        if du.is_main_process():
            self.checkpointer.save(name, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                   scaler=self.scaler, iteration=self.iteration, config_yaml=self.cfg.dump(),
                                   extra={"best_acc": self.best_acc, "best_iteration": self.best_iteration,
                                          "skipped_steps": self.skipped_steps})
        if name == "last":
            self.saved_at = self.iteration
        du.barrier()

    def resume(self) -> None:
        path = self.checkpointer.path("last")
        state = load_checkpoint(path)
        load_model_state(self.model, self.model.state_from_checkpoint(state, path), path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.iteration = self.saved_at = state["iteration"]
        self.best_acc = state["extra"]["best_acc"]
        self.skipped_steps = state["extra"]["skipped_steps"]
        self.best_iteration = state["extra"].get("best_iteration", -1)  # -1: written before it was recorded
        logger.info("resumed from %s at iteration %d (best val %.2f)", path, self.iteration, self.best_acc)
        self._restore_best(state)

    def _restore_best(self, last: dict) -> None:
        """An improving validation writes `last`, then `best`, from one state: a kill between the two leaves a
        best.pth older than the best accuracy `last` records, and `last` holds exactly what best.pth should."""
        best = self.checkpointer.path("best")
        if self.best_iteration != self.iteration or (
                self.checkpointer.has("best") and load_checkpoint(best)["iteration"] == self.iteration):
            return
        if du.is_main_process():
            logger.warning("%s: the run was stopped before it held the best validation of iteration %d (%.2f); "
                           "written again from %s", best, self.iteration, self.best_acc, self.checkpointer.path("last"))
            atomic_save(last, best)
        du.barrier()

    # -- one iteration ---------------------------------------------------------------------------------
    def run_step(self, episode: Episode) -> dict:
        cfg, accum = self.cfg, self.cfg.TRAIN.BATCH_SIZE_PER_TASK
        boundary = (self.iteration + 1) % accum == 0
        episode = episode.to(self.device)
        self.replaced_videos.update(tuple(v) for v in episode.replaced_videos)
        sync = self.ddp.no_sync() if (self.ddp is not self.model and not boundary) else contextlib.nullcontext()
        with sync:
            with autocast(cfg, self.device):
                features = None if self.cache is None else self.cache.episode_features(self.model, episode)
                out = self.ddp(episode, features)
            loss = out["loss"].float()
            # All ranks agree on skipping, or DDP's gradient all-reduce would wait forever on the others.
            bad = du.all_reduce(torch.tensor(float(not torch.isfinite(loss)), device=self.device)).item() > 0
            if not bad:
                self.scaler.scale(loss / accum).backward()
        self._count_bad(bad, loss)
        if boundary:
            self._optimizer_step()
            self.scheduler.step()
        self.iteration += 1
        return {"loss": loss.item(), **{k: v.item() for k, v in out.get("losses", {}).items()}}

    def _count_bad(self, bad: bool, loss: torch.Tensor) -> None:
        if not bad:
            self.bad_steps = 0
            return
        self.bad_steps += 1
        self.skipped_steps += 1
        logger.warning("iteration %d: non-finite loss (%s) skipped (%d in a row, %d in all)",
                       self.iteration, loss.item(), self.bad_steps, self.skipped_steps)
        if self.bad_steps >= self.cfg.TRAIN.MAX_BAD_STEPS:
            raise DivergedError(
                f"stopping: {self.bad_steps} consecutive non-finite losses at iteration {self.iteration} "
                f"(TRAIN.MAX_BAD_STEPS={self.cfg.TRAIN.MAX_BAD_STEPS}); lower SOLVER.BASE_LR or check the data; "
                f"the last good state is in {self.checkpointer.path('last')}")

    def _optimizer_step(self) -> None:
        if self.cfg.TRAIN.CLIP_GRAD_NORM > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.TRAIN.CLIP_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    # -- the loop --------------------------------------------------------------------------------------
    def train(self, metrics: MetricsWriter) -> None:
        cfg, total = self.cfg, self.cfg.TRAIN.NUM_TRAIN_TASKS
        self.model.train()
        loader = build_loader(cfg, "train", train_episode_indices(self.iteration, total), skip_videos=self.cache)
        bar = Progress(total, "train", initial=self.iteration)  # in a file, _log_train's lines are the progress
        start, running = time.time(), []
        # Workers are shut down on any exit (error, stop signal): a stopped run leaves no orphans.
        with worker_episodes(loader) as episodes:
            try:
                for episode in episodes:
                    logs = self.run_step(episode)
                    running.append(logs["loss"])
                    bar.update(1)
                    if self.iteration % cfg.LOG_PERIOD == 0 or self.iteration == total:
                        self._log_train(metrics, running, start)
                        running = []
                    if self.iteration % cfg.TRAIN.VAL_FRE_ITER == 0 or self.iteration == total:
                        self._validate(metrics)
                    elif cfg.TRAIN.CHECKPOINT_PERIOD and self.iteration % cfg.TRAIN.CHECKPOINT_PERIOD == 0:
                        self.save("last")
                    if self.iteration % cfg.TRAIN.BATCH_SIZE_PER_TASK == 0 and self._stop_agreed():
                        self._stop()
            finally:
                bar.close()

    def _stop_agreed(self) -> bool:
        """Did any rank get a stop signal? Every rank asks at the same optimizer-step boundary, so none hangs."""
        return du.all_reduce(torch.tensor(float(STOP.requested), device=self.device)).item() > 0

    def _stop(self) -> None:
        """Save `last` (if this iteration is not saved yet) and end the run on every rank with PreemptedError."""
        if self.saved_at != self.iteration:
            self.save("last")
        signame = STOP.name or "a signal on another rank"
        logger.warning("stopped by %s at iteration %d; saved %s", signame, self.iteration,
                       self.checkpointer.path("last"))
        raise PreemptedError(f"{self.checkpointer.path('last')}: training stopped by {signame} at iteration "
                             f"{self.iteration} of {self.cfg.TRAIN.NUM_TRAIN_TASKS}; the state is saved (run the "
                             f"same command with --resume to continue)")

    def _log_train(self, metrics: MetricsWriter, losses: list[float], start: float) -> None:
        finite = [x for x in losses if math.isfinite(x)]
        record = {"train/loss": sum(finite) / len(finite) if finite else float("nan"),  # NaN is stored as null
                  "lr": self.optimizer.param_groups[-1]["lr"],
                  "train/skipped_steps": self.skipped_steps}
        metrics.write(record, self.iteration)
        logger.info("iter %d/%d loss %.4f lr %.2e (%.1fs)", self.iteration, self.cfg.TRAIN.NUM_TRAIN_TASKS,
                    record["train/loss"], record["lr"], time.time() - start)

    def _validate(self, metrics: MetricsWriter) -> None:
        result = evaluate(self.ddp, self.cfg, "val", self.cfg.TRAIN.NUM_VAL_TASKS, self.device)
        improved = result["accuracy"] > self.best_acc
        if improved:
            self.best_acc, self.best_iteration = result["accuracy"], self.iteration
        metrics.write({"val/accuracy": result["accuracy"], "val/ci95": result["ci95"],
                       "val/best": self.best_acc}, self.iteration)
        logger.info("iter %d val accuracy %.2f ± %.2f (best %.2f)%s", self.iteration, result["accuracy"],
                    result["ci95"], self.best_acc, " new best" if improved else "")
        # `last` first: it records which `best` it expects, so a kill between the two is repaired on resume
        # (_restore_best). The other order would rely on the resumed run validating to the same accuracy again.
        self.save("last")
        if improved:
            self.save("best")


def train(cfg: CfgNode, device: torch.device, resume: bool) -> Trainer:
    """Build, optionally resume, train; returns the trainer (its model holds the last weights)."""
    trainer = Trainer(cfg, device)
    if resume:
        trainer.resume()
    metrics = MetricsWriter(cfg.OUTPUT_DIR)
    # Records past the state we start from belong to no checkpoint: a resume's lost iterations, or all records of a
    # start that ended before its first checkpoint (a fresh start begins at iteration 0).
    metrics.truncate_after(trainer.iteration)
    try:
        trainer.train(metrics)
    finally:
        metrics.close()
    if du.is_main_process():
        _write_curves(cfg.OUTPUT_DIR)
    return trainer


def _write_curves(output_dir: str) -> None:
    """curves.png of the finished run; a plotting failure is logged, never the end of a finished run."""
    from utils.plots import write_curves

    try:
        logger.info("training curves: %s", write_curves(output_dir))
    except (OSError, ValueError) as e:
        logger.warning("could not draw the training curves: %s", e)

