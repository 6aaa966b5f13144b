"""Fast exact evaluation: cached per-video features give the same episodes' results as re-encoding."""
import pytest
import torch
from tiny_run import TINY_CFG, tiny_opts

from models import build_model
from runs.test_net_few_shot import evaluate
from utils.config import load_config


@pytest.mark.parametrize("extra", [(), ("VIDEO.HEAD.NAME", "MCDP_FSAR", "VFAM.ENABLE", "True", "AMCAP.ENABLE", "True",
                                        "AMCAP.NUM_COALITIONS", "16")], ids=["clipfsar", "mcdp"])
def test_cached_evaluation_equals_uncached(synthetic_root, tmp_path, extra):
    opts = tiny_opts(synthetic_root, tmp_path, "DATA.TRACK_DIR", str(synthetic_root / "tracks"), *extra)
    results = {}
    for cache in (False, True):
        cfg = load_config(TINY_CFG, opts + ["TEST.FEATURE_CACHE", str(cache), "TEST.CACHE_SIZE", "12"])
        torch.manual_seed(0)
        model = build_model(cfg)
        results[cache] = evaluate(model, cfg, "test", 12, torch.device("cpu"))
    assert results[True]["episode_accuracies"] == results[False]["episode_accuracies"]
    assert results[True]["per_class"] == results[False]["per_class"]
    cache = results[True]["cache"]
    assert cache["hits"] > 0 and cache["videos"] <= 12
    assert cache["hits"] + cache["misses"] == 12 * 10
