"""CLIP-FSAR head on a tiny random 5-way 1-shot episode: losses, label independence, caching, one backbone pass;
the video-text loss against CLIP-FSAR's equations. The parts alone: tests/test_parts.py."""
import pytest
import torch

from models.build import HEAD_REGISTRY, build_model
from models.heads.base import VideoFeatures
from models.heads.clipfsar import CNN_OTAM_CLIPFSAR
from models.heads.parts import class_codes, class_means, with_motion
from runs.config import load_config
from runs.run import check_run_config
from utils.config import ConfigError
from utils.episode import Episode, build_episode

WAY, SHOT, QUERY, FRAMES, SIZE = 5, 1, 1, 8, 64
SPLIT_CLASSES = [f"class {i}" for i in range(12)]


def tiny_episode(seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    real = torch.randperm(len(SPLIT_CLASSES), generator=g)[:WAY]  # the episode's classes, in episode order
    support = torch.randn(WAY * SHOT, FRAMES, 3, SIZE, SIZE, generator=g)
    target = torch.randn(WAY * QUERY, FRAMES, 3, SIZE, SIZE, generator=g)
    return build_episode(support, target, shot=SHOT, query=QUERY, class_ids=real, split_class_names=SPLIT_CLASSES,
                         support_ids=[f"s{i}" for i in range(WAY * SHOT)],
                         target_ids=[f"q{i}" for i in range(WAY * QUERY)], episode_index=seed, split="train")


# The tiny CLIP from scratch, a narrow feed-forward layer; tests add KEY VALUE pairs.
TINY_HEAD = ("VIDEO.HEAD.BACKBONE_NAME", "FSAR-Tiny-ViT", "VIDEO.HEAD.PRETRAINED", "", "DATA.TRAIN_CROP_SIZE", "64",
             "DATA.TEST_CROP_SIZE", "64", "VIDEO.HEAD.TRANSFORMER_MLP_DIM", "256")
PATCH_MAP = ("VIDEO.HEAD.FRAME_FEATURE", "patch_map")


def make_head(*opts: str) -> CNN_OTAM_CLIPFSAR:
    """The head as `build_model` builds it from config (`opts`: KEY VALUE pairs), seeded: same opts, same weights."""
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY_HEAD, *opts])
    return CNN_OTAM_CLIPFSAR(**CNN_OTAM_CLIPFSAR.from_config(cfg))


@pytest.fixture(scope="module")
def episode() -> Episode:
    return tiny_episode()


@pytest.mark.parametrize("options", [
    (),
    ("TRAIN.USE_CLASSIFICATION", "False"),
    (*PATCH_MAP, "TRAIN.MERGE_BEFORE", "True"),
    (*PATCH_MAP, "VIDEO.HEAD.PROJ_DIM", "64", "TRAIN.SINGLE_DIRECT", "True", "TRAIN.TRANSFORMER_DEPTH", "2"),
    (*PATCH_MAP, "VIDEO.HEAD.SUPPORT_TEXT_TOKEN", "False", "VIDEO.HEAD.TRANSFORMER_LAYER_SCALE", "0.0"),
    ("VIDEO.HEAD.FRAME_MOTION", "difference"),
    (*PATCH_MAP, "VIDEO.HEAD.FRAME_MOTION", "difference", "VIDEO.HEAD.PROJ_DIM", "64"),
    ("VIDEO.HEAD.FRAME_MOTION", "pixel_difference"),
])
def test_forward_backward_returns_logits_and_losses(episode, options):
    head = make_head(*options).train()
    out = head(episode)
    assert out["logits"].shape == (WAY * QUERY, WAY)
    expected = {"otam_ce"} if "TRAIN.USE_CLASSIFICATION" in options else {"otam_ce", "video_text_ce"}
    assert set(out["losses"]) == expected
    torch.testing.assert_close(out["loss"], sum(out["losses"].values()))
    out["loss"].backward()
    # Every trainable parameter gets a gradient (DistributedDataParallel needs no find_unused_parameters).
    assert [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None] == []
    assert head.backbone.model.visual.conv1.weight.grad.abs().sum() > 0
    # With patch_map the class-text token reaches the transformer through a learned map.
    if head.frame_encoder.frame_feature == "patch_map" and head.temporal.text_token:
        assert head.text_proj.weight.grad.abs().sum() > 0


def permuted(episode: Episode, order: torch.Tensor) -> Episode:
    return episode.replace(target_labels=episode.target_labels[order],
                           real_target_labels=episode.real_target_labels[order])


@pytest.mark.parametrize("options", [(), ("TRAIN.COMBINE", "True")])
def test_query_logits_ignore_query_labels(episode, options):
    head = make_head(*PATCH_MAP, "VIDEO.HEAD.TRANSFORMER_DROPOUT", "0.0", "VIDEO.HEAD.TRANSFORMER_FFN_DROPOUT", "0.0",
                     *options)
    order = torch.tensor([2, 0, 4, 1, 3])
    for training in (True, False):
        head.train(training)
        with torch.no_grad():
            reference = head(episode)["logits"]
            shuffled = head(permuted(episode, order))["logits"]
        torch.testing.assert_close(shuffled, reference, rtol=0, atol=0)


def test_eval_text_and_combine_follow_clip_fsar(episode):
    head = make_head(*PATCH_MAP, "TRAIN.EVAL_TEXT", "True").eval()
    with torch.no_grad():
        text_probs = head(episode)["logits"]
        torch.testing.assert_close(text_probs.sum(1), torch.ones(WAY * QUERY))
        head.text_eval.eval_text, head.text_eval.combine, head.text_eval.text_coff = False, True, 0.0
        visual_only = head(episode)["logits"]
        head.text_eval.combine = False
        dists = -head(episode)["logits"]
    torch.testing.assert_close(visual_only, torch.softmax((FRAMES - dists) / FRAMES, dim=1))
    assert head(episode)["losses"] == {}


def test_text_features_are_cached_by_class_name(episode, monkeypatch):
    head = make_head(*PATCH_MAP).train()
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
    head = make_head(*PATCH_MAP, "VIDEO.HEAD.TRAIN_TEXT_ENCODER", "True", "TRAIN.USE_CLASSIFICATION", "False").train()
    calls = []
    original = head.backbone.encode_text
    monkeypatch.setattr(head.backbone, "encode_text", lambda ids: calls.append(ids.shape[0]) or original(ids))
    head(episode)["loss"].backward()
    head(episode)
    assert calls == [WAY, WAY]
    assert head.backbone.model.token_embedding.weight.grad is not None


def test_one_backbone_call_per_episode(episode, monkeypatch):
    head = make_head(*PATCH_MAP).train()
    calls = []
    original = head.backbone.encode_frames
    monkeypatch.setattr(head.backbone, "encode_frames",
                        lambda images, dense=False: calls.append(images.shape[0]) or original(images, dense))
    head(episode)
    assert calls == [WAY * (SHOT + QUERY) * FRAMES]


def test_forward_equals_encode_videos_then_forward_with_those_features(episode):
    head = make_head(*PATCH_MAP).eval()
    with torch.no_grad():
        support = head.encode_videos(episode.support_set)
        target = head.encode_videos(episode.target_set)
        assert support["frames"].shape == (WAY * SHOT, FRAMES, 64 * 2 * 2)
        assert target["video_text"].shape == (WAY * QUERY, FRAMES, 64)
        torch.testing.assert_close(head(episode, (VideoFeatures(support), VideoFeatures(target)))["logits"],
                                   head(episode)["logits"])


@pytest.mark.parametrize("merge_before", [False, True])
def test_per_video_outputs_give_the_episode_logits(episode, merge_before):
    """The eval cache's per-video outputs (queries alone, supports with their own class text) change nothing."""
    head = make_head(*PATCH_MAP, "TRAIN.MERGE_BEFORE", str(merge_before)).eval()
    with torch.no_grad():
        support = head.encode_videos(episode.support_set)
        target = head.encode_videos(episode.target_set)
        own_classes = [episode.class_names[i] for i in episode.support_labels.tolist()]
        support_out = head.per_video_outputs(support, own_classes)
        assert set(support_out) == (set() if merge_before else {"support_tokens"})
        target_out = head.per_video_outputs(target)
        assert set(target_out) == {"query_tokens"}
        cached = head(episode, (VideoFeatures(support, support_out), VideoFeatures(target, target_out)))["logits"]
        torch.testing.assert_close(cached, head(episode)["logits"])
    with pytest.raises(RuntimeError, match="eval mode"):
        head.train().per_video_outputs(target)


def test_patch_map_descriptor_is_centred_per_channel(episode):
    head = make_head(*PATCH_MAP, "VIDEO.HEAD.PATCH_POOL", "2").eval()
    with torch.no_grad():
        frames = head.encode_videos(episode.support_set[:1])["frames"]  # [1, T, D*P*P]
    cells = frames.reshape(FRAMES, 64, 4)
    torch.testing.assert_close(cells.mean(-1), torch.zeros(FRAMES, 64), atol=1e-5, rtol=0)


def test_param_groups_split_backbone_and_head():
    head = make_head(*PATCH_MAP, "VIDEO.HEAD.FINETUNE", "frozen")
    groups = {g["name"]: g["params"] for g in head.param_groups()}
    assert not groups["backbone"]  # frozen image tower, frozen text tower
    trainable = [p for p in head.parameters() if p.requires_grad]
    assert sorted(map(id, groups["head"])) == sorted(map(id, trainable))
    head = make_head()
    full = {g["name"]: g["params"] for g in head.param_groups()}
    assert {id(p) for p in full["backbone"]} == {id(p) for p in head.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in full["head"]} == {id(p) for n, p in head.named_parameters() if not n.startswith("backbone")}
    assert len(full["backbone"]) > 0


def test_build_model_from_config():
    cfg = load_config(None, ["VIDEO.HEAD.BACKBONE_NAME", "FSAR-Tiny-ViT", "VIDEO.HEAD.PRETRAINED", "",
                             "DATA.TRAIN_CROP_SIZE", "64", "DATA.TEST_CROP_SIZE", "64",
                             "VIDEO.HEAD.FRAME_FEATURE", "patch_map", "TRAIN.MERGE_BEFORE", "True"])
    model = build_model(cfg)
    assert isinstance(model, HEAD_REGISTRY.get("CNN_OTAM_CLIPFSAR"))
    assert model.temporal.merge_before and model.backbone.image_size == (64, 64)
    assert model.model_dim == 64 * cfg.VIDEO.HEAD.PATCH_POOL ** 2


def test_video_text_logits_use_the_lineage_cosine(episode):
    head = make_head().train()
    with torch.no_grad():
        head.text_logit_scale.fill_(3.0)
        feats = head.encode_videos(torch.cat([episode.support_set, episode.target_set]))
        num_support = episode.support_set.shape[0]
        support, target = VideoFeatures(feats).split(num_support)
        losses = head.losses(torch.zeros(WAY * QUERY, WAY), support, target, episode)
        video = feats["video_text"].mean(1)
        text = head.class_text_features(SPLIT_CLASSES)
        cos = video @ text.t() / (video.norm(dim=-1)[:, None] * text.norm(dim=-1)[None] + 0.01)
        labels = torch.cat([episode.real_support_labels, episode.real_target_labels])
        torch.testing.assert_close(losses["video_text_ce"], torch.nn.functional.cross_entropy(3.0 * cos, labels))


def test_depth_is_clip_fsar_train_transformer_depth():
    base = ["VIDEO.HEAD.BACKBONE_NAME", "FSAR-Tiny-ViT", "VIDEO.HEAD.PRETRAINED", "", "DATA.TRAIN_CROP_SIZE", "64",
            "DATA.TEST_CROP_SIZE", "64"]
    assert len(build_model(load_config(None, [*base, "TRAIN.TRANSFORMER_DEPTH", "2"])).temporal) == 2
    with pytest.raises(ConfigError, match=r"TRAIN\.TRANSFORMER_DEPTH.*CLIP-FSAR reads 0 as 1"):
        load_config(None, [*base, "TRAIN.TRANSFORMER_DEPTH", "0"])
    with pytest.raises(ConfigError, match=r"unknown config key VIDEO\.HEAD\.TRANSFORMER_DEPTH"):
        load_config(None, [*base, "VIDEO.HEAD.TRANSFORMER_DEPTH", "2"])


@pytest.mark.parametrize("finetune, training, expected", [
    ("full", True, "separate"), ("full", False, "joint"), ("frozen", True, "joint")])
def test_batchnorm_backbone_encodes_support_and_query_apart_while_training(monkeypatch, finetune, training,
                                                                           expected):
    """CLIP-FSAR's two backbone calls give RN50's training-mode BatchNorm per-set batch statistics."""
    head = make_head("VIDEO.HEAD.BACKBONE_NAME", "RN50", "VIDEO.HEAD.FINETUNE", finetune,
                     "VIDEO.HEAD.TRANSFORMER_MLP_DIM", "64").train(training)
    backbone = head.backbone
    frames = 2
    episode = tiny_episode().replace(support_set=torch.zeros(WAY, frames, 3, 4, 4),
                                     target_set=torch.zeros(WAY * QUERY, frames, 3, 4, 4))
    calls = []

    def encode_frames(images, dense=False):  # stands in for the RN50 pass: only the batching is checked here
        calls.append(images.shape[0])
        return {"global": torch.randn(images.shape[0], backbone.embed_dim)}

    monkeypatch.setattr(backbone, "encode_frames", encode_frames)
    with torch.no_grad():
        head(episode)
    assert calls == ([WAY * frames, WAY * QUERY * frames] if expected == "separate"
                     else [WAY * (1 + QUERY) * frames])


def test_layer_scale_zero_starts_the_transformer_as_the_identity_and_trains_its_scales(episode):
    head = make_head(*PATCH_MAP, "VIDEO.HEAD.TRANSFORMER_LAYER_SCALE", "0.0", "TRAIN.TRANSFORMER_DEPTH", "2")
    frames = torch.randn(3, FRAMES, head.model_dim)
    assert torch.equal(head.temporal.eval()(frames), frames)
    head.train()(episode)["loss"].backward()
    for block in head.temporal:
        assert block.attn_scale.grad.abs().sum() > 0 and block.ffn_scale.grad.abs().sum() > 0
    # the lineage's blocks (layer scale 1) have no such parameters
    assert not [n for n, _ in make_head().temporal.named_parameters() if n.endswith("_scale")]


def test_without_support_text_tokens_the_class_names_do_not_reach_the_prototypes(episode):
    renamed = episode.replace(class_names=[f"other {i}" for i in range(WAY)])
    plain = make_head(*PATCH_MAP, "VIDEO.HEAD.SUPPORT_TEXT_TOKEN", "False",
                      "VIDEO.HEAD.TRANSFORMER_LAYER_SCALE", "0.5").eval()
    with torch.no_grad():
        assert torch.equal(plain(episode)["logits"], plain(renamed)["logits"])
        # the supports pass the transformer as the queries do
        support = plain.frame_descriptors(plain.encode_videos(episode.support_set))
        prototypes = class_means(plain.temporal(support), episode.support_labels, WAY)
        query = plain.temporal(plain.frame_descriptors(plain.encode_videos(episode.target_set)))
        torch.testing.assert_close(-plain.matcher(query, prototypes), plain(episode)["logits"])
    lineage = make_head(*PATCH_MAP).eval()
    with torch.no_grad():
        assert not torch.allclose(lineage(episode)["logits"], lineage(renamed)["logits"])
    assert isinstance(plain.text_proj, torch.nn.Identity)  # no text map without text tokens


def test_frame_motion_difference_feeds_the_transformer_the_motion_descriptor(episode):
    head = make_head(*PATCH_MAP, "VIDEO.HEAD.FRAME_MOTION", "difference").eval()
    plain = make_head(*PATCH_MAP).eval()  # same seed: the same backbone weights
    assert head.model_dim == 2 * plain.model_dim
    with torch.no_grad():
        encoded = head.encode_videos(episode.target_set)
        torch.testing.assert_close(head.frame_descriptors(encoded), with_motion(plain.frame_descriptors(encoded)))
        # the same frames in reverse order: identical static halves per frame, the motion halves change sign
        reverse = head.frame_descriptors({**encoded, "frames": encoded["frames"].flip(1)})
        forward = head.frame_descriptors(encoded)
        torch.testing.assert_close(reverse[:, 1:-1, :plain.model_dim], forward.flip(1)[:, 1:-1, :plain.model_dim])
        torch.testing.assert_close(reverse[:, 1:-1, plain.model_dim:],
                                   -forward.flip(1)[:, 2:, plain.model_dim:])
    assert not isinstance(head.text_proj, torch.nn.Identity)  # text is mapped to the wider descriptor


def test_frame_motion_pixel_difference_encodes_each_frames_pixel_change_to_the_next(episode):
    head = make_head("VIDEO.HEAD.FRAME_MOTION", "pixel_difference").eval()
    plain = make_head().eval()  # same seed: the same backbone weights
    videos = episode.target_set
    with torch.no_grad():
        pixels = plain.backbone.normalise(videos)
        change = pixels[:, 1:] - pixels[:, :-1]
        expected = plain.frame_encoder.encode(plain.backbone, None, torch.cat([change, change[:, -1:]], dim=1),
                                              None, None)
        encoded = head.encode_videos(videos)
        torch.testing.assert_close(encoded["frames"], expected["frames"])
        torch.testing.assert_close(encoded["video_text"], expected["video_text"])
        # a still video has no change: every frame encodes as the blank (zero) image
        still = head.encode_videos(videos[:, :1].expand_as(videos).contiguous())["frames"]
        blank = plain.frame_encoder.encode(plain.backbone, None, torch.zeros_like(pixels[:, :1]), None, None)
        torch.testing.assert_close(still, blank["frames"].expand_as(still))
        # nor has a one-frame video (as FRAME_MOTION difference gives it a zero change)
        torch.testing.assert_close(head.encode_videos(videos[:, :1])["frames"], blank["frames"])
    assert head.model_dim == plain.model_dim  # the same width: the change replaces the frame


# ---------------------------------------------------------------------------------------------- video-text targets
def test_orthogonal_targets_replace_the_class_texts_in_the_video_text_loss(episode):
    losses = {}
    for targets in ("class_text", "orthogonal"):
        head = make_head("TRAIN.VIDEO_TEXT_TARGETS", targets).train()
        with torch.no_grad():
            head.text_logit_scale.fill_(3.0)
            feats = head.encode_videos(torch.cat([episode.support_set, episode.target_set]))
            support, target = VideoFeatures(feats).split(episode.support_set.shape[0])
            losses[targets] = head.losses(torch.zeros(WAY * QUERY, WAY), support, target, episode)["video_text_ce"]
    video = feats["video_text"].mean(1)
    codes = class_codes(len(SPLIT_CLASSES), video.shape[1])  # one per class of the split, by its split index
    cos = video @ codes.t() / (video.norm(dim=-1)[:, None] + 0.01)
    labels = torch.cat([episode.real_support_labels, episode.real_target_labels])
    torch.testing.assert_close(losses["orthogonal"], torch.nn.functional.cross_entropy(3.0 * cos, labels))
    assert not torch.allclose(losses["orthogonal"], losses["class_text"])


@pytest.mark.parametrize("key", ["TRAIN.EVAL_TEXT", "TRAIN.COMBINE", "AMCAP.ENABLE"])
def test_orthogonal_targets_refuse_what_needs_video_embeddings_trained_towards_class_texts(key):
    check_run_config(load_config(None, ["TRAIN.VIDEO_TEXT_TARGETS", "orthogonal"]))
    cfg = load_config(None, ["TRAIN.VIDEO_TEXT_TARGETS", "orthogonal", key, "True"])
    with pytest.raises(ConfigError, match=rf"TRAIN\.VIDEO_TEXT_TARGETS orthogonal: {key}"):
        check_run_config(cfg)
