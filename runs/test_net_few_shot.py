"""Episodic evaluation: fixed episodes split across ranks, gathered, each counted exactly once; the weights the final
test reads (TEST.CHECKPOINT_FILE_PATH, declared, checked and loaded here)."""
from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Callable

import torch

from datasets import build_loader
from models import build_model
from models.feature_cache import VideoFeatureCache
from runs.engine_utils import Progress, autocast, unwrap, worker_episodes
from utils import distributed as du
from utils.checkpoint import load_checkpoint, load_model_state
from utils.config import PATH, POSITIVE, CfgNode, ConfigError, one_of, rules, section
from utils.episode import Episode
from utils.logger import get_logger

if TYPE_CHECKING:
    from runs.train_net_few_shot import Trainer

logger = get_logger(__name__)

PROGRESS_LOG_SECONDS = 60.0  # off a terminal: a plain "test k/N" line at most this often during a long evaluation


def add_test_config(cfg: CfgNode) -> None:
    _T = section(cfg, "TEST")
    _T.ENABLE = True  # run the final test on the test split after training (or alone, see CHECKPOINT_FILE_PATH)
    _T.CHECKPOINT_FILE_PATH = ""  # test-only runs: weights to test ("" = the run's best, else its last)
    _T.FEATURE_CACHE = True  # encode each test video once and reuse it across episodes (exact; eval mode only)
    _T.CACHE_SIZE = 20000  # videos kept in the feature cache (least recently used are dropped)
    _T.CACHE_DEVICE = "cpu"  # where cached features live: cpu (host memory) or model (the model's device)
    _TR = section(cfg, "TRAIN")
    _TR.NUM_TEST_TASKS = 10000  # fixed test episodes (indices 0..N-1 of the test split)
    _TR.NUM_VAL_TASKS = 1000  # fixed validation episodes used to select the best checkpoint
    rules("TEST", CHECKPOINT_FILE_PATH=PATH, CACHE_SIZE=POSITIVE, CACHE_DEVICE=one_of("cpu", "model"))
    rules("TRAIN", NUM_TEST_TASKS=POSITIVE, NUM_VAL_TASKS=POSITIVE)


def check_test_config(cfg: CfgNode) -> None:
    if not cfg.TRAIN.ENABLE and cfg.TEST.ENABLE and not cfg.TEST.CHECKPOINT_FILE_PATH:
        raise ConfigError("TEST.CHECKPOINT_FILE_PATH: a test-only run (TRAIN.ENABLE False) needs the weights to "
                          "test (set TEST.CHECKPOINT_FILE_PATH)")


def model_for_test(cfg: CfgNode, device: torch.device, trainer: Trainer | None) -> tuple[torch.nn.Module, str]:
    """The model the final test runs and where its weights come from: TEST.CHECKPOINT_FILE_PATH, else the run's
    `best`, else the trainer's last weights in memory (no validation ran)."""
    if cfg.TEST.CHECKPOINT_FILE_PATH:
        path = cfg.TEST.CHECKPOINT_FILE_PATH
    elif trainer is not None and trainer.checkpointer.has("best"):
        path = trainer.checkpointer.path("best")
    elif trainer is not None:
        return trainer.model, "last weights in memory (no validation ran)"
    else:
        raise ConfigError("TEST.CHECKPOINT_FILE_PATH: a test-only run needs the weights to test")
    model = trainer.model if trainer is not None else build_model(cfg).to(device)
    load_weights_for_test(model, path)
    return model, path


def load_weights_for_test(model: torch.nn.Module, path: str) -> None:
    """Weights only (strict): a checkpoint from another config fails with the key diff. The head reads the format
    (models/heads/base.py:state_from_checkpoint; CLIP-FSAR's own `.pyth` for the prototype heads, the lineage's for
    its CNN heads)."""
    head = unwrap(model)
    load_model_state(head, head.state_from_checkpoint(load_checkpoint(path), path), path)


def summarize_accuracies(records: list[dict], num_episodes: int, split: str) -> dict:
    """Mean accuracy, 95% CI and per-class accuracy from per-episode records gathered from all ranks."""
    indices = sorted(r["index"] for r in records)
    if indices != list(range(num_episodes)):
        missing = sorted(set(range(num_episodes)) - set(indices))[:10]
        raise RuntimeError(f"{split}: episodes not evaluated exactly once (got {len(indices)} of "
                           f"{num_episodes}; missing e.g. {missing})")
    ordered = [r["accuracy"] for r in sorted(records, key=lambda r: r["index"])]
    accs = torch.tensor(ordered, dtype=torch.float64)
    std = accs.std(unbiased=False).item() if len(accs) > 1 else 0.0
    correct, total = defaultdict(int), defaultdict(int)
    for r in records:
        for name, (c, t) in r["per_class"].items():
            correct[name] += c
            total[name] += t
    return {
        "split": split,
        "episodes": num_episodes,
        "accuracy": 100.0 * accs.mean().item(),
        "ci95": 100.0 * 1.96 * std / math.sqrt(num_episodes),
        "per_class": {name: 100.0 * correct[name] / total[name] for name in sorted(total)},
        "episode_accuracies": [100.0 * a for a in ordered],  # by episode index; each index seen exactly once
    }


def episode_record(index: int, episode: Episode, logits: torch.Tensor) -> dict:
    """Per-episode accuracy and per-class (correct, total) counts; labels are read only here, after the model."""
    pred = logits.argmax(dim=-1).cpu()
    target = episode.target_labels.cpu()
    hits = (pred == target)
    per_class: dict[str, list[int]] = {}
    for label, hit in zip(target.tolist(), hits.tolist(), strict=True):
        name = episode.class_names[label]
        c, t = per_class.get(name, (0, 0))
        per_class[name] = (c + int(hit), t + 1)
    return {"index": index, "accuracy": hits.float().mean().item(), "per_class": per_class,
            "replaced": list(episode.replaced_videos), "no_tracks": list(episode.missing_tracks)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: CfgNode, split: str, num_episodes: int, device: torch.device,
             stop: Callable[[], None] | None = None) -> dict:
    """Evaluate `num_episodes` fixed episodes of `split`; every rank takes a contiguous shard.

    `stop` is called before every episode and may raise to end the evaluation (a stop signal during the final
    test; validation inside training runs to its end so the checkpoint after it is consistent)."""
    head = unwrap(model)
    was_training = head.training
    head.eval()
    start = time.time()
    indices = list(du.shard_indices(num_episodes))
    use_cache = cfg.TEST.FEATURE_CACHE and head.supports_feature_cache  # declared by the head (models/heads/base.py)
    cache = VideoFeatureCache(cfg.TEST.CACHE_SIZE, "TEST.CACHE_SIZE", cfg.TEST.CACHE_DEVICE) if use_cache else None
    loader = build_loader(cfg, split, indices, skip_videos=cache)
    records = []
    with worker_episodes(loader) as episodes:
        progress = Progress(len(indices), split, leave=False, every_s=PROGRESS_LOG_SECONDS)
        try:
            for index, episode in zip(indices, episodes, strict=True):
                if stop is not None:
                    stop()
                episode = episode.to(device)
                with autocast(cfg, device):
                    # The trainer's call: forward(episode, features), features from the cache or None (encode here).
                    features = None if cache is None else cache.episode_features(head, episode)
                    logits = head(episode, features)["logits"]
                records.append(episode_record(index, episode, logits.float()))
                progress.update()
        finally:
            progress.close()
    gathered = [r for part in du.all_gather_object(records) for r in part]
    result = summarize_accuracies(gathered, num_episodes, split)
    result["replaced_videos"] = sorted({tuple(v) for r in gathered for v in r["replaced"]})
    result["videos_without_tracks"] = len({v for r in gathered for v in r["no_tracks"]})
    result["seconds"] = time.time() - start
    if cache is not None:
        result["cache"] = cache.stats()
    head.train(was_training)
    return result
