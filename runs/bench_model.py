"""Model-side benchmarks for runs/benchmark.py: train-step, eval, otam, flops.

Every subcommand runs its variants side by side in one invocation and reports medians of several repeats and
ratios to the first variant (these machines are noisy; single timings mean little).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import torch

from runs.config import load_config
from utils.config import CfgNode
from utils.episode import Episode, build_episode

# Dense bf16 peak TFLOP/s per GPU (vendor datasheets) for model-FLOP utilisation.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}
DEFAULT_TRAIN_VARIANTS = {
    "fp32": [],
    "bf16": ["TRAIN.AUTOCAST", "bf16"],
    "fp32+ckpt": ["TRAIN.GRAD_CHECKPOINT", "True"],
    "bf16+ckpt": ["TRAIN.AUTOCAST", "bf16", "TRAIN.GRAD_CHECKPOINT", "True"],
}


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeats(fn, repeats: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def random_episode(cfg: CfgNode, image_size: int, generator: torch.Generator) -> Episode:
    """An episode of random frames with the config's way/shot/query/frames (for timing only)."""
    way, shot, query, frames = cfg.TRAIN.WAY, cfg.TRAIN.SHOT, cfg.TRAIN.QUERY_PER_CLASS, cfg.DATA.NUM_INPUT_FRAMES
    k = cfg.VFAM.MAX_ENTITIES

    def videos(n):
        return torch.randn(n, frames, 3, image_size, image_size, generator=generator)

    def boxes(n):
        corner = torch.rand(n, frames, k, 2, generator=generator) * 0.5
        return torch.cat([corner, corner + 0.4], dim=-1), torch.ones(n, frames, k, dtype=torch.bool)

    support, target = videos(way * shot), videos(way * query)
    (sb, sm), (tb, tm) = boxes(way * shot), boxes(way * query)
    return build_episode(support, target, shot=shot, query=query, class_ids=range(way),
                         split_class_names=[f"class {i}" for i in range(way)],
                         support_ids=[f"s{i}" for i in range(way * shot)],
                         target_ids=[f"q{i}" for i in range(way * query)], episode_index=0, split="train",
                         support_boxes=sb, support_box_mask=sm, target_boxes=tb, target_box_mask=tm)


def parse_variants(items: list[str] | None, default: dict) -> dict[str, list[str]]:
    """`NAME=KEY VALUE KEY VALUE` strings to {name: overrides}."""
    if not items:
        return dict(default)
    out = {}
    for item in items:
        name, _, rest = item.partition("=")
        out[name] = rest.split()
    return out


# ------------------------------------------------------------------------------------------- train-step
def train_step_child(args) -> None:
    """One variant in a fresh process, so CPU peak memory (max RSS) belongs to this variant alone."""
    from runs.train_net_few_shot import Trainer

    device = pick_device()
    cfg = load_config(args.cfg, list(args.opts) + ["TRAIN.BATCH_SIZE_PER_TASK", "1", "VIDEO.HEAD.PRETRAINED", ""])
    torch.manual_seed(0)
    trainer = Trainer(cfg, device)
    size = trainer.model.backbone.image_size[0]
    episode = random_episode(cfg, size, torch.Generator().manual_seed(0)).to(device)
    base_rss = psutil.Process().memory_info().rss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_repeats(lambda: trainer.run_step(episode), args.repeats, args.warmup, device)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    flops = episode_flops(trainer.model, episode) if args.flops else 0.0
    result = {"seconds": times, "median_s": statistics.median(times), "peak_bytes": peak,
              "peak_above_start_bytes": peak - (0 if device.type == "cuda" else base_rss),
              "train_flops": 3.0 * flops, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    with open(args.child_json, "w") as f:
        json.dump(result, f)


def bench_train_step(args) -> dict:
    variants = parse_variants(args.variant, DEFAULT_TRAIN_VARIANTS)
    results = {}
    for name, overrides in variants.items():
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            child_json = tmp.name
        cmd = [sys.executable, os.path.abspath(sys.argv[0]), "train-step-child", "--cfg", args.cfg,
               "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--child-json", child_json]
        cmd += ["--flops"] if args.flops and name == next(iter(variants)) else []
        cmd += list(args.opts) + overrides
        subprocess.run(cmd, check=True)
        with open(child_json) as f:
            results[name] = json.load(f)
        os.remove(child_json)
    first = results[next(iter(results))]
    flops = first["train_flops"]
    rows = []
    for name, r in results.items():
        row = {"variant": name, "median_s": r["median_s"], "episodes_per_s": 1.0 / r["median_s"],
               "time_ratio": r["median_s"] / first["median_s"], "peak_GiB": r["peak_bytes"] / 2**30,
               "peak_ratio": r["peak_bytes"] / first["peak_bytes"]}
        peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in r["device_name"]), None)
        if flops and peak_tflops:
            row["MFU"] = flops / r["median_s"] / (peak_tflops * 1e12)
        rows.append(row)
    return {"rows": rows, "raw": results, "device": first["device_name"]}


# ------------------------------------------------------------------------------------------- otam
def bench_otam(args) -> dict:
    from models.otam import otam_cum_dist, otam_cum_dist_loop

    device = pick_device()
    shape = args.shape  # (queries, prototypes, query frames, prototype frames), validated by the parser
    dists = torch.rand(*shape, device=device)
    fast_value = otam_cum_dist(dists)
    loop_value = otam_cum_dist_loop(dists)
    max_diff = (fast_value - loop_value).abs().max().item()

    def fwd_bwd(fn):
        x = dists.clone().requires_grad_(True)
        fn(x).sum().backward()

    rows = []
    for name, fn in (("per-cell loop", otam_cum_dist_loop), ("vectorised", otam_cum_dist)):
        times = time_repeats(lambda fn=fn: fwd_bwd(fn), args.repeats, args.warmup, device)
        rows.append({"variant": name, "median_ms": 1e3 * statistics.median(times)})
    for row in rows:
        row["speedup_vs_loop"] = rows[0]["median_ms"] / row["median_ms"]
    return {"rows": rows, "shape": shape, "max_abs_diff": max_diff, "device": str(device)}


# ------------------------------------------------------------------------------------------- flops
def episode_flops(model: torch.nn.Module, episode: Episode) -> float:
    """Forward FLOPs of one episode (fvcore counts a fused multiply-add as one flop)."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    analysis = FlopCountAnalysis(_EpisodeWrapper(model, episode), ())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = float(analysis.total())
    model.train(was_training)
    return total


class _EpisodeWrapper(torch.nn.Module):
    """fvcore traces tensor inputs; the episode is bound here and logits returned."""

    def __init__(self, model, episode):
        super().__init__()
        self.model, self.episode = model, episode

    def forward(self):
        return self.model(self.episode)["logits"]


def bench_flops(args) -> dict:
    from fvcore.nn import FlopCountAnalysis, flop_count_table

    from models import build_model

    cfg = load_config(args.cfg, list(args.opts) + ["VIDEO.HEAD.PRETRAINED", ""])
    model = build_model(cfg).eval()
    episode = random_episode(cfg, model.backbone.image_size[0], torch.Generator().manual_seed(0))
    analysis = FlopCountAnalysis(_EpisodeWrapper(model, episode), ())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    table = flop_count_table(analysis, max_depth=args.depth)
    trainable = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = name.split(".")[0] if not name.startswith("backbone.") else ".".join(name.split(".")[:3])
            trainable[top] = trainable.get(top, 0) + p.numel()
    print(table)
    return {"total_gflops": analysis.total() / 1e9, "table": table,
            "trainable_params": trainable, "trainable_total": sum(trainable.values()),
            "params_total": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------------------------------- eval
def bench_eval(args) -> dict:
    """Test episodes/s with and without the per-video feature cache on the same fixed episodes."""
    from datasets import DATASET_REGISTRY
    from models import build_model
    from runs.test_net_few_shot import evaluate

    device = pick_device()
    rows, accs = [], {}
    for cached in (False, True):
        cfg = load_config(args.cfg, list(args.opts) + ["TEST.FEATURE_CACHE", str(cached)])
        DATASET_REGISTRY.get(cfg.DATA.DATASET, "DATA.DATASET").prepare(cfg)
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = evaluate(model, cfg, args.split, args.episodes, device)
            times.append(time.perf_counter() - start)
        accs[cached] = result["episode_accuracies"]
        rows.append({"variant": "cached" if cached else "re-encode every episode",
                     "episodes_per_s": args.episodes / statistics.median(times), "accuracy": result["accuracy"]})
    for row in rows:
        row["speedup"] = row["episodes_per_s"] / rows[0]["episodes_per_s"]
    return {"rows": rows, "episodes": args.episodes, "identical_episode_accuracies": accs[True] == accs[False],
            "device": str(device)}


# ------------------------------------------------------------------------------------------- train-cache
def _timed_steps(trainer, cfg: CfgNode, indices: list[int], device: torch.device) -> list[float]:
    """Seconds per training iteration (loading the episode included) over the given episode indices."""
    from datasets import build_loader

    loader = iter(build_loader(cfg, "train", indices, skip_videos=trainer.cache))
    times = []
    for _ in indices:
        sync(device)
        start = time.perf_counter()
        trainer.run_step(next(loader))
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_train_cache(args) -> dict:
    """Frozen-backbone training episodes/s with and without the per-video feature cache, on the same episodes.

    The cached variant first trains `--first-pass` episodes (the pass that fills the cache); both variants are then
    timed on the following `--episodes` episodes.
    """
    from datasets import DATASET_REGISTRY
    from runs.train_net_few_shot import Trainer

    device = pick_device()
    rows = []
    timed = list(range(args.first_pass, args.first_pass + args.episodes))
    for cached in (False, True):
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(args.cfg, list(args.opts) + [
                "VIDEO.HEAD.FINETUNE", "frozen", "DATA.DETERMINISTIC_TRAIN", "True", "TRAIN.BATCH_SIZE_PER_TASK", "1",
                "TRAIN.FEATURE_CACHE", str(cached), "OUTPUT_DIR", out])
            DATASET_REGISTRY.get(cfg.DATA.DATASET, "DATA.DATASET").prepare(cfg)
            torch.manual_seed(0)
            trainer = Trainer(cfg, device)
            warm = list(range(args.first_pass)) if cached else list(range(args.first_pass - args.warmup,
                                                                            args.first_pass))
            first = _timed_steps(trainer, cfg, warm, device)
            hits, misses = (trainer.cache.hits, trainer.cache.misses) if cached else (0, 0)
            times = _timed_steps(trainer, cfg, timed, device)
        row = {"variant": "feature cache" if cached else "encode every episode",
               "episodes_per_s": 1.0 / statistics.median(times), "median_s": statistics.median(times)}
        if cached:
            row["first_pass_episodes_per_s"] = len(first) / sum(first)
            row["timed_hit_rate"] = (trainer.cache.hits - hits) / max(
                1, trainer.cache.hits - hits + trainer.cache.misses - misses)
            row["videos_cached"] = len(trainer.cache)
        rows.append(row)
    for row in rows:
        row["speedup"] = row["episodes_per_s"] / rows[0]["episodes_per_s"]
    return {"rows": rows, "first_pass": args.first_pass, "episodes": args.episodes, "device": str(device)}
