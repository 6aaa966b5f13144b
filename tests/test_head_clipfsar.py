"""CLIP-FSAR head on a tiny random 5-way 1-shot episode: losses, label independence, caching, one backbone pass."""
import pytest
import torch

from models.build import HEAD_REGISTRY, build_model
from models.clip import CLIPBackbone
from models.heads.clipfsar import CNN_OTAM_CLIPFSAR, class_means
from utils.config import load_config

WAY, SHOT, QUERY, FRAMES, SIZE = 5, 1, 1, 8, 64
SPLIT_CLASSES = [f"class {i}" for i in range(12)]


def tiny_episode(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    real = torch.randperm(len(SPLIT_CLASSES), generator=g)[:WAY]  # the episode's classes, in episode order
    support_labels = torch.arange(WAY).repeat_interleave(SHOT)
    target_labels = torch.arange(WAY).repeat_interleave(QUERY)
    return {
        "support_set": torch.randn(WAY * SHOT, FRAMES, 3, SIZE, SIZE, generator=g),
        "target_set": torch.randn(WAY * QUERY, FRAMES, 3, SIZE, SIZE, generator=g),
        "support_labels": support_labels, "target_labels": target_labels,
        "real_support_labels": real[support_labels], "real_target_labels": real[target_labels],
        "class_names": [SPLIT_CLASSES[i] for i in real], "split_class_names": list(SPLIT_CLASSES),
        "support_ids": [f"s{i}" for i in range(WAY * SHOT)], "target_ids": [f"q{i}" for i in range(WAY * QUERY)],
        "episode_index": seed, "split": "train", "replaced_videos": [],
    }


def make_head(**kwargs) -> CNN_OTAM_CLIPFSAR:
    torch.manual_seed(0)
    backbone_kwargs = {k: kwargs.pop(k) for k in ("train_text", "finetune") if k in kwargs}
    return CNN_OTAM_CLIPFSAR(backbone=CLIPBackbone("FSAR-Tiny-ViT", **backbone_kwargs), transformer_mlp_dim=256,
                             **kwargs)


@pytest.fixture(scope="module")
def episode() -> dict:
    return tiny_episode()


@pytest.mark.parametrize("options", [
    dict(frame_feature="global"),
    dict(frame_feature="global", use_classification=False),
    dict(frame_feature="patch_map", merge_before=True),
    dict(frame_feature="patch_map", proj_dim=64, single_direct=True, transformer_depth=2),
])
def test_forward_backward_returns_logits_and_losses(episode, options):
    head = make_head(**options).train()
    out = head(episode)
    assert out["logits"].shape == (WAY * QUERY, WAY)
    expected = {"otam_ce", "video_text_ce"} if options.get("use_classification", True) else {"otam_ce"}
    assert set(out["losses"]) == expected
    torch.testing.assert_close(out["loss"], sum(out["losses"].values()))
    out["loss"].backward()
    # Every trainable parameter gets a gradient (DistributedDataParallel needs no find_unused_parameters).
    assert [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None] == []
    assert head.backbone.model.visual.conv1.weight.grad.abs().sum() > 0
    if head.frame_feature == "patch_map":  # the class-text token reaches the transformer through a learned map
        assert head.text_proj.weight.grad.abs().sum() > 0


def permuted(episode: dict, order: torch.Tensor) -> dict:
    out = dict(episode)
    out["target_labels"] = episode["target_labels"][order]
    out["real_target_labels"] = episode["real_target_labels"][order]
    return out


@pytest.mark.parametrize("options", [dict(), dict(combine=True)])
def test_query_logits_ignore_query_labels(episode, options):
    head = make_head(frame_feature="patch_map", transformer_dropout=0.0, transformer_ffn_dropout=0.0, **options)
    order = torch.tensor([2, 0, 4, 1, 3])
    for training in (True, False):
        head.train(training)
        with torch.no_grad():
            reference = head(episode)["logits"]
            shuffled = head(permuted(episode, order))["logits"]
        torch.testing.assert_close(shuffled, reference, rtol=0, atol=0)


def test_eval_text_and_combine_follow_clip_fsar(episode):
    head = make_head(frame_feature="patch_map", eval_text=True).eval()
    with torch.no_grad():
        text_probs = head(episode)["logits"]
        torch.testing.assert_close(text_probs.sum(1), torch.ones(WAY * QUERY))
        head.eval_text, head.combine, head.text_coff = False, True, 0.0
        visual_only = head(episode)["logits"]
        head.combine = False
        dists = -head(episode)["logits"]
    torch.testing.assert_close(visual_only, torch.softmax((FRAMES - dists) / FRAMES, dim=1))
    assert head(episode)["losses"] == {}


def test_text_features_are_cached_by_class_name(episode, monkeypatch):
    head = make_head(frame_feature="patch_map").train()
    calls = []
    original = head.backbone.encode_text
    monkeypatch.setattr(head.backbone, "encode_text", lambda ids: calls.append(ids.shape[0]) or original(ids))
    head(episode)
    assert calls == [WAY, len(SPLIT_CLASSES) - WAY]  # episode names, then the split names not seen yet
    head.eval()
    with torch.no_grad():
        head(tiny_episode(seed=1))  # other episode classes, all from the cached split names
    assert len(calls) == 2
    head.load_state_dict(head.state_dict())  # new weights invalidate the cache
    with torch.no_grad():
        head(episode)
    assert calls[2:] == [WAY]


def test_trainable_text_encoder_bypasses_cache(episode, monkeypatch):
    head = make_head(frame_feature="patch_map", train_text=True, use_classification=False).train()
    calls = []
    original = head.backbone.encode_text
    monkeypatch.setattr(head.backbone, "encode_text", lambda ids: calls.append(ids.shape[0]) or original(ids))
    head(episode)["loss"].backward()
    head(episode)
    assert calls == [WAY, WAY]
    assert head.backbone.model.token_embedding.weight.grad is not None


def test_one_backbone_call_per_episode(episode, monkeypatch):
    head = make_head(frame_feature="patch_map").train()
    calls = []
    original = head.backbone.encode_frames
    monkeypatch.setattr(head.backbone, "encode_frames",
                        lambda images, dense=False: calls.append(images.shape[0]) or original(images, dense))
    head(episode)
    assert calls == [WAY * (SHOT + QUERY) * FRAMES]


def test_forward_equals_encode_then_forward_features(episode):
    head = make_head(frame_feature="patch_map").eval()
    with torch.no_grad():
        support = head.encode_videos(episode["support_set"])
        target = head.encode_videos(episode["target_set"])
        assert support["frames"].shape == (WAY * SHOT, FRAMES, 64 * 2 * 2)
        assert target["video_text"].shape == (WAY * QUERY, FRAMES, 64)
        torch.testing.assert_close(head.forward_features(support, target, episode)["logits"],
                                   head(episode)["logits"])


@pytest.mark.parametrize("merge_before", [False, True])
def test_per_video_outputs_give_the_episode_logits(episode, merge_before):
    """The eval cache's per-video outputs (queries alone, supports with their own class text) change nothing."""
    head = make_head(frame_feature="patch_map", merge_before=merge_before).eval()
    with torch.no_grad():
        support = head.encode_videos(episode["support_set"])
        target = head.encode_videos(episode["target_set"])
        own_classes = [episode["class_names"][i] for i in episode["support_labels"].tolist()]
        support_out = head.per_video_outputs(support, own_classes)
        assert set(support_out) == (set() if merge_before else {"support_tokens"})
        target_out = head.per_video_outputs(target)
        assert set(target_out) == {"query_tokens"}
        cached = head.forward_features({**support, **support_out}, {**target, **target_out}, episode)["logits"]
        torch.testing.assert_close(cached, head(episode)["logits"])
    with pytest.raises(RuntimeError, match="eval mode"):
        head.train().per_video_outputs(target)


def test_patch_map_descriptor_is_centred_per_channel(episode):
    head = make_head(frame_feature="patch_map", patch_pool=2).eval()
    with torch.no_grad():
        frames = head.encode_videos(episode["support_set"][:1])["frames"]  # [1, T, D*P*P]
    cells = frames.reshape(FRAMES, 64, 4)
    torch.testing.assert_close(cells.mean(-1), torch.zeros(FRAMES, 64), atol=1e-5, rtol=0)


def test_param_groups_split_backbone_and_head():
    head = make_head(frame_feature="patch_map", finetune="frozen")
    groups = {g["name"]: g["params"] for g in head.param_groups()}
    assert not groups["backbone"]  # frozen image tower, frozen text tower
    trainable = [p for p in head.parameters() if p.requires_grad]
    assert sorted(map(id, groups["head"])) == sorted(map(id, trainable))
    head = make_head()
    full = {g["name"]: g["params"] for g in head.param_groups()}
    assert {id(p) for p in full["backbone"]} == {id(p) for p in head.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in full["head"]} == {id(p) for n, p in head.named_parameters() if not n.startswith("backbone")}
    assert len(full["backbone"]) > 0


def test_class_means_averages_shots():
    features = torch.arange(12.0).reshape(4, 3)
    torch.testing.assert_close(class_means(features, torch.tensor([1, 0, 1, 0]), 2),
                               torch.tensor([[6.0, 7.0, 8.0], [3.0, 4.0, 5.0]]))


def test_build_model_from_config():
    cfg = load_config(None, ["VIDEO.HEAD.BACKBONE_NAME", "FSAR-Tiny-ViT", "VIDEO.HEAD.PRETRAINED", "",
                             "VIDEO.HEAD.FRAME_FEATURE", "patch_map", "TRAIN.MERGE_BEFORE", "True"])
    model = build_model(cfg)
    assert isinstance(model, HEAD_REGISTRY.get("CNN_OTAM_CLIPFSAR"))
    assert model.merge_before and model.backbone.image_size == (64, 64)
    assert model.model_dim == 64 * cfg.VIDEO.HEAD.PATCH_POOL ** 2


def test_invalid_options_are_rejected():
    backbone = CLIPBackbone("FSAR-Tiny-ViT")
    with pytest.raises(ValueError, match="FRAME_FEATURE"):
        CNN_OTAM_CLIPFSAR(backbone=backbone, frame_feature="cls")
    with pytest.raises(ValueError, match="PROMPT_TEMPLATE"):
        CNN_OTAM_CLIPFSAR(backbone=backbone, prompt_template="a photo")
    with pytest.raises(ValueError, match="TRANSFORMER_HEADS"):
        CNN_OTAM_CLIPFSAR(backbone=backbone, transformer_heads=7)
