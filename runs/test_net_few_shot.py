"""Episodic evaluation: fixed episodes split across ranks, gathered, each counted exactly once."""
from __future__ import annotations

import math
import time
from collections import defaultdict

import torch
from tqdm import tqdm

from datasets import build_loader
from runs.engine_utils import autocast, to_device, unwrap
from utils import distributed as du
from utils.config import CfgNode, register_config, section
from utils.logger import get_logger

logger = get_logger(__name__)


@register_config
def add_test_config(cfg: CfgNode) -> None:
    _T = section(cfg, "TEST")
    _T.ENABLE = True  # run the final test on the test split after training (or alone, see CHECKPOINT_FILE_PATH)
    _T.CHECKPOINT_FILE_PATH = ""  # test-only runs: weights to test ("" = the run's best, else its last)
    _T.FEATURE_CACHE = True  # encode each test video once and reuse it across episodes (exact; eval mode only)
    _T.CACHE_SIZE = 20000  # videos kept in the feature cache (least recently used are dropped)
    _TR = section(cfg, "TRAIN")
    _TR.NUM_TEST_TASKS = 10000  # fixed test episodes (indices 0..N-1 of the test split)
    _TR.NUM_VAL_TASKS = 1000  # fixed validation episodes used to select the best checkpoint


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


def episode_record(index: int, episode: dict, logits: torch.Tensor) -> dict:
    """Per-episode accuracy and per-class (correct, total) counts; labels are read only here, after the model."""
    pred = logits.argmax(dim=-1).cpu()
    target = episode["target_labels"].cpu()
    hits = (pred == target)
    per_class: dict[str, list[int]] = {}
    for label, hit in zip(target.tolist(), hits.tolist(), strict=True):
        name = episode["class_names"][label]
        c, t = per_class.get(name, (0, 0))
        per_class[name] = (c + int(hit), t + 1)
    return {"index": index, "accuracy": hits.float().mean().item(), "per_class": per_class,
            "replaced": list(episode.get("replaced_videos", []))}


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: CfgNode, split: str, num_episodes: int, device: torch.device) -> dict:
    """Evaluate `num_episodes` fixed episodes of `split`; every rank takes a contiguous shard."""
    head = unwrap(model)
    was_training = head.training
    head.eval()
    start = time.time()
    indices = list(du.shard_indices(num_episodes))
    loader = build_loader(cfg, split, indices)
    cache = VideoFeatureCache(cfg.TEST.CACHE_SIZE) if cfg.TEST.FEATURE_CACHE else None
    records = []
    for index, episode in zip(indices, tqdm(loader, total=len(indices), desc=split, disable=not du.is_main_process(),
                                            leave=False)):
        episode = to_device(episode, device)
        with autocast(cfg, device):
            logits = forward_episode(head, episode, cache)
        records.append(episode_record(index, episode, logits.float()))
    gathered = [r for part in du.all_gather_object(records) for r in part]
    result = summarize_accuracies(gathered, num_episodes, split)
    result["replaced_videos"] = sorted({tuple(v) for r in gathered for v in r["replaced"]})
    result["seconds"] = time.time() - start
    if cache is not None:
        result["cache_hits"], result["cache_misses"] = cache.hits, cache.misses
    head.train(was_training)
    return result


def forward_episode(head: torch.nn.Module, episode: dict, cache: "VideoFeatureCache | None") -> torch.Tensor:
    """Logits of one episode, reusing cached per-video features when the head allows it."""
    if cache is None or not getattr(head, "supports_feature_cache", False):
        return head(episode)["logits"]
    support = cache.encode(head, episode["support_ids"], episode["support_set"], episode, "support")
    target = cache.encode(head, episode["target_ids"], episode["target_set"], episode, "target")
    return head.forward_features(support, target, episode)["logits"]


class VideoFeatureCache:
    """Bounded LRU cache of per-video features from `head.encode_videos`, keyed by video id.

    Exact because test-time decoding and transforms are deterministic and the head is in eval mode; the
    per-video feature dict is sliced per video so episodes can mix cached and new videos.
    """

    def __init__(self, capacity: int):
        from collections import OrderedDict

        self.capacity = capacity
        self.store: "OrderedDict[str, dict]" = OrderedDict()
        self.hits = self.misses = 0

    def encode(self, head, ids: list[str], videos: torch.Tensor, episode: dict, role: str) -> dict:
        missing = [i for i, vid in enumerate(ids) if vid not in self.store]
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        if missing:
            extra = head.video_inputs(episode, role, missing) if hasattr(head, "video_inputs") else {}
            feats = head.encode_videos(videos[missing], **extra)
            for j, i in enumerate(missing):
                self.store[ids[i]] = {k: v[j] for k, v in feats.items()}
                self.store.move_to_end(ids[i])
            while len(self.store) > self.capacity:
                self.store.popitem(last=False)
        for vid in ids:
            self.store.move_to_end(vid)
        keys = self.store[ids[0]].keys()
        return {k: torch.stack([self.store[vid][k] for vid in ids]) for k in keys}
