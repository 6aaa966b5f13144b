"""Fast exact evaluation: cached per-video features give the same episodes' results as re-encoding."""
import pytest
import torch
from tiny_run import TINY_CFG, tiny_opts

from models import build_model
from runs.config import load_config
from runs.test_net_few_shot import evaluate

MCDP = ("VIDEO.HEAD.NAME", "MCDP_FSAR", "AMCAP.ENABLE", "True", "AMCAP.NUM_COALITIONS", "16")


@pytest.mark.parametrize("extra", [(), (*MCDP, "VFAM.ENABLE", "True"),
                                   (*MCDP, "VIDEO.HEAD.SUPPORT_TEXT_TOKEN", "False",
                                    "VIDEO.HEAD.TRANSFORMER_LAYER_SCALE", "0.3"),
                                   (*MCDP, "AMCAP.REGION_FEATURE", "masked", "AMCAP.QUERY_ANCHOR", "global",
                                    "AMCAP.GRID", "2", "AMCAP.TOKEN_FEATURE", "word", "AMCAP.SALIENCY", "value",
                                    "VIDEO.HEAD.DENSE_TOKENS", "value"),
                                   ("VIDEO.HEAD.FRAME_MOTION", "difference"),
                                   ("VIDEO.HEAD.FRAME_MOTION", "pixel_difference")],
                         ids=["clipfsar", "mcdp", "mcdp-no-support-text", "mcdp-masked-regions", "clipfsar-motion",
                              "clipfsar-pixel-motion"])
def test_cached_evaluation_equals_uncached(synthetic_root, tmp_path, extra):
    opts = tiny_opts(synthetic_root, tmp_path, "DATA.TRACK_DIR", str(synthetic_root / "tracks"), *extra)
    results = {}
    for cache, storage in ((False, "cpu"), (True, "cpu"), (True, "model")):
        cfg = load_config(TINY_CFG, opts + ["TEST.FEATURE_CACHE", str(cache), "TEST.CACHE_SIZE", "12",
                                            "TEST.CACHE_DEVICE", storage])
        torch.manual_seed(0)
        model = build_model(cfg)
        results[cache, storage] = evaluate(model, cfg, "test", 12, torch.device("cpu"))
    for storage in ("cpu", "model"):
        assert results[True, storage]["episode_accuracies"] == results[False, "cpu"]["episode_accuracies"]
        assert results[True, storage]["per_class"] == results[False, "cpu"]["per_class"]
    results[True] = results[True, "cpu"]
    cache = results[True]["cache"]
    assert cache["hits"] > 0 and cache["videos"] <= 12
    assert cache["hits"] + cache["misses"] == 12 * 10
    # the per-video head outputs were used: queries always, supports only where their text token is fixed or absent
    assert cache["query_outputs"] > 0
    mcdp = extra[:1] == ("VIDEO.HEAD.NAME",)
    assert (cache["support_outputs"] > 0) == (not mcdp or "VIDEO.HEAD.SUPPORT_TEXT_TOKEN" in extra)


def test_frozen_backbone_training_cache_matches_plain_training(synthetic_root, tmp_path):
    from datasets import build_loader
    from runs.train_net_few_shot import Trainer

    opts = tiny_opts(synthetic_root, tmp_path, "VIDEO.HEAD.FINETUNE", "frozen", "DATA.DETERMINISTIC_TRAIN", "True",
                     "TRAIN.BATCH_SIZE_PER_TASK", "1", "VIDEO.HEAD.TRANSFORMER_DROPOUT", "0.0",
                     "VIDEO.HEAD.TRANSFORMER_FFN_DROPOUT", "0.0")
    losses, weights = {}, {}
    for cache in (False, True):
        cfg = load_config(TINY_CFG, opts + ["TRAIN.FEATURE_CACHE", str(cache)])
        torch.manual_seed(0)
        trainer = Trainer(cfg, torch.device("cpu"))
        loader = build_loader(cfg, "train", list(range(6)), skip_videos=trainer.cache)
        losses[cache] = [trainer.run_step(episode)["loss"] for episode in loader]
        weights[cache] = trainer.model.temporal.state_dict()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5, abs=1e-6)
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=1e-4, atol=1e-6)
    assert trainer.cache.hits > 0


def test_training_cache_refuses_random_views(synthetic_root, tmp_path):
    from runs.train_net_few_shot import Trainer

    cfg = load_config(TINY_CFG, tiny_opts(synthetic_root, tmp_path, "VIDEO.HEAD.FINETUNE", "frozen",
                                          "TRAIN.FEATURE_CACHE", "True"))
    with pytest.raises(ValueError, match="DATA.DETERMINISTIC_TRAIN"):
        Trainer(cfg, torch.device("cpu"))


def test_cache_keeps_its_own_copies_and_names_a_bad_storage_key():
    from models.feature_cache import VideoFeatureCache

    cache = VideoFeatureCache(4, "TEST.CACHE_SIZE", "cpu")
    batch = torch.arange(6.0).reshape(2, 3)
    kept = cache._keep(batch[1])
    batch.zero_()
    assert kept.tolist() == [3.0, 4.0, 5.0] and kept.untyped_storage().nbytes() == 3 * 4
    with pytest.raises(ValueError, match="TRAIN.CACHE_DEVICE must be 'cpu' or 'model'"):
        VideoFeatureCache(4, "TRAIN.CACHE_SIZE", "cuda")
