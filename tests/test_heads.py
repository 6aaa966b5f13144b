"""Every registered head on real synthetic episodes; MCDP's modules and their guarantees."""
import pytest
import torch
from tiny_run import TINY_CFG, tiny_opts

from datasets import build_dataset
from models import HEAD_REGISTRY, build_model
from runs.config import load_config

MODULES_ON = ("VFAM.ENABLE", "True", "AMCAP.ENABLE", "True", "AMCAP.NUM_COALITIONS", "16")
# The world main job's module keys (docs/world.md), with AMCAP's motion-ranked regions on top.
MOTION_KEYS = ("VFAM.ATTEND", "motion", "VFAM.ENTITY_MOTION", "True", "VFAM.FUSION", "replace", "VFAM.TEMPORAL",
               "False", "VFAM.TRACK_TEMPERATURE", "0.1", "VIDEO.HEAD.DENSE_TOKENS", "value", "AMCAP.QUERY_ANCHOR",
               "global", "AMCAP.TOKEN_FEATURE", "word", "AMCAP.SALIENCY", "motion", "AMCAP.REGION_SCORE", "motion")


def config(root, tmp_path, *extra):
    return load_config(TINY_CFG, tiny_opts(root, tmp_path / "out", "DATA.TRACK_DIR", str(root / "tracks"), *extra))


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


@pytest.fixture(scope="module")
def episodes(synthetic_root, tmp_path_factory):
    cfg = config(synthetic_root, tmp_path_factory.mktemp("ep"))
    return {split: build_dataset(cfg, split, [3])[0] for split in ("train", "test")}


def permute_queries(episode, order):
    keys = ("target_set", "target_labels", "real_target_labels", "target_boxes", "target_box_mask")
    return episode.replace(**{key: getattr(episode, key)[order] for key in keys},
                           target_ids=[episode.target_ids[i] for i in order.tolist()])


@pytest.mark.parametrize("name", sorted(HEAD_REGISTRY._obj_map))
def test_every_registered_head_runs_forward_and_backward(name, synthetic_root, tmp_path, episodes):
    head = build(config(synthetic_root, tmp_path, "VIDEO.HEAD.NAME", name, *MODULES_ON)).train()
    out = head(episodes["train"])
    assert out["logits"].shape == (5, 5) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert head.backbone.model.visual.conv1.weight.grad.abs().sum() > 0


def test_mcdp_with_both_modules_off_equals_clipfsar(synthetic_root, tmp_path, episodes):
    base = build(config(synthetic_root, tmp_path))
    mcdp = build(config(synthetic_root, tmp_path, "VIDEO.HEAD.NAME", "MCDP_FSAR"))
    assert set(mcdp.state_dict()) - set(base.state_dict()) == {"fusion_logit_scale"}
    for train in (True, False):
        base.train(train)
        mcdp.train(train)
        for split, episode in episodes.items():
            torch.manual_seed(1)
            a = base(episode)
            torch.manual_seed(1)
            b = mcdp(episode)
            assert torch.equal(a["logits"], b["logits"]), (train, split)
            if train:
                assert a["losses"].keys() == b["losses"].keys()
                for key in a["losses"]:
                    assert torch.equal(a["losses"][key], b["losses"][key])


def test_vfam_gate_zero_gives_exactly_the_baseline_logits(synthetic_root, tmp_path, episodes):
    base = build(config(synthetic_root, tmp_path)).eval()
    with_vfam = build(config(synthetic_root, tmp_path, "VFAM.ENABLE", "True")).eval()
    missing, unexpected = with_vfam.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("vfam.") for k in missing)
    assert with_vfam.vfam.gate.abs().sum() == 0
    with torch.no_grad():
        assert torch.equal(base(episodes["test"])["logits"], with_vfam(episodes["test"])["logits"])
        with_vfam.vfam.gate.fill_(0.5)
        assert not torch.equal(base(episodes["test"])["logits"], with_vfam(episodes["test"])["logits"])


def test_mcdp_gradients_reach_vfam_gate_and_every_prompt_generator_parameter(synthetic_root, tmp_path, episodes):
    head = build(config(synthetic_root, tmp_path, "VIDEO.HEAD.NAME", "MCDP_FSAR", *MODULES_ON)).train()
    out = head(episodes["train"])
    out["loss"].backward()
    assert head.vfam.gate.grad is not None and head.vfam.gate.grad.abs().sum() > 0
    generator = head.amcap.prompt_generator
    zero = [n for n, p in generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert zero == []
    assert head.fusion_logit_scale.grad.abs() > 0


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("keys", [(), MOTION_KEYS], ids=["default", "motion"])
def test_mcdp_query_logits_ignore_query_labels(synthetic_root, tmp_path, episodes, train, keys):
    head = build(config(synthetic_root, tmp_path, "VIDEO.HEAD.NAME", "MCDP_FSAR", *MODULES_ON, *keys,
                        "VIDEO.HEAD.TRANSFORMER_DROPOUT", "0.0", "VIDEO.HEAD.TRANSFORMER_FFN_DROPOUT", "0.0"))
    head.train(train)
    episode = episodes["train"]
    relabelled = episode.replace(target_labels=episode.target_labels.roll(1),
                                 real_target_labels=episode.real_target_labels.roll(1))
    order = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        logits = head(episode)["logits"]
        assert torch.equal(head(relabelled)["logits"], logits)
        torch.testing.assert_close(head(permute_queries(episode, order))["logits"], logits[order])


def test_mcdp_output_is_deterministic_for_a_fixed_seed(synthetic_root, tmp_path, episodes):
    cfg = config(synthetic_root, tmp_path, "VIDEO.HEAD.NAME", "MCDP_FSAR", *MODULES_ON)
    a, b = build(cfg).eval(), build(cfg).eval()
    with torch.no_grad():
        assert torch.equal(a(episodes["test"])["logits"], b(episodes["test"])["logits"])


def test_loading_weights_clears_the_cached_class_texts(synthetic_root, tmp_path, episodes):
    """Fixed class texts are cached per name; loaded weights may change the text tower, so the caches go."""
    cfg = config(synthetic_root, tmp_path, "VIDEO.HEAD.NAME", "MCDP_FSAR", *MODULES_ON)
    model, other = build(cfg).eval(), build(cfg, seed=1).eval()
    with torch.no_grad():
        model(episodes["test"])
        model.class_text_features(episodes["test"].class_names)
        # One cache holds both (models/text_cache.py): the head's prompts and AMCAP's class texts.
        assert "prompt" in model.text_cache.kinds() and "amcap" in model.amcap.text_cache.kinds()
        model.load_state_dict(other.state_dict())
        assert not model.text_cache and not model.amcap.text_cache
        torch.testing.assert_close(model(episodes["test"])["logits"], other(episodes["test"])["logits"])


def test_data_normalisation_and_crop_must_match_the_backbone_at_build_time(synthetic_root, tmp_path):
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match=r"DATA.MEAN \[0.5, 0.5, 0.5\] differs from the FSAR-Tiny-ViT backbone's "
                                          r"\[0.48145466, 0.4578275, 0.40821073\]"):
        build(config(synthetic_root, tmp_path, "DATA.MEAN", "[0.5, 0.5, 0.5]"))
    with pytest.raises(ConfigError, match=r"DATA.TEST_CROP_SIZE 56 differs from the FSAR-Tiny-ViT backbone's input "
                                          r"size 64x64; set it to 64"):
        build(config(synthetic_root, tmp_path, "DATA.TEST_CROP_SIZE", "56"))
