"""AMCAP prompts and the composed module (models/amcap/prompts.py, amcap.py) on the tiny CLIP config."""
import pytest
import torch

from models.amcap import AMCAP, build_class_text, encode_prompts
from models.clip import CLIPBackbone
from runs.config import get_cfg

WAY, SHOT, QUERY_PER_CLASS, FRAMES = 3, 2, 2, 8
NAMES = ["jumping jacks", "pushing something from left to right", "archery"]


@pytest.fixture(scope="module")
def backbone() -> CLIPBackbone:
    torch.manual_seed(0)
    return CLIPBackbone("FSAR-Tiny-ViT", finetune="frozen").eval()


@pytest.fixture(scope="module")
def episode_tokens(backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense tokens of random support and query videos, [S, T, 8, 8, 64] and [Q, T, 8, 8, 64]."""
    gen = torch.Generator().manual_seed(0)
    videos = WAY * (SHOT + QUERY_PER_CLASS)
    with torch.no_grad():
        tokens = backbone.encode_frames(torch.randn(videos * FRAMES, 3, 64, 64, generator=gen), dense=True)["tokens"]
    tokens = tokens.reshape(videos, FRAMES, *tokens.shape[1:])
    return tokens[:WAY * SHOT], tokens[WAY * SHOT:]


def _support_labels() -> torch.Tensor:
    return torch.arange(WAY).repeat_interleave(SHOT)  # class-major, like the episode dict


def _module(backbone, **kwargs) -> AMCAP:
    torch.manual_seed(0)
    return AMCAP(backbone.embed_dim, backbone.text_width, **kwargs)


def test_config_keys_build_the_module(backbone):
    cfg = get_cfg()
    assert cfg.AMCAP.ENABLE is False
    module = AMCAP(**AMCAP.from_config(cfg, backbone.embed_dim, backbone.text_width))
    assert module.grid == cfg.AMCAP.GRID and module.prompt_generator.n_ctx == cfg.AMCAP.N_CTX


def test_name_mask_marks_the_class_name_tokens(backbone):
    text = build_class_text(backbone, NAMES, "a photo of {}.", n_ctx=4)
    # "<sot> a photo of jumping jacks . <eot>": the name is at positions 4 and 5
    assert text.name_mask[0].nonzero().flatten().tolist() == [4, 5]
    assert text.name_mask.shape == text.token_ids.shape and text.features.shape == (WAY, backbone.embed_dim)


def test_class_text_is_encoded_once_per_name_while_the_text_tower_is_frozen(backbone, monkeypatch):
    module = _module(backbone)
    expected = build_class_text(backbone, NAMES, module.text_template, module.prompt_generator.n_ctx)
    calls = []
    original = backbone.encode_text_tokens
    monkeypatch.setattr(backbone, "encode_text_tokens", lambda ids: calls.append(len(ids)) or original(ids))
    first = module.class_text(backbone, NAMES[:2])
    reordered = module.class_text(backbone, [NAMES[2], NAMES[0]])  # only the new name is encoded
    assert calls == [2, 1]
    for field in ("features", "token_features", "token_ids", "name_mask", "prompt_ids", "prompt_embeds"):
        torch.testing.assert_close(getattr(first, field), getattr(expected, field)[:2])
        torch.testing.assert_close(getattr(reordered, field), getattr(expected, field)[[2, 0]])
    module.clear_text_cache()
    module.class_text(backbone, NAMES[:1])
    assert calls == [2, 1, 1]


def test_prompt_with_placeholder_embeddings_equals_encoding_the_text(backbone):
    text = build_class_text(backbone, NAMES, "a photo of {}.", n_ctx=4)
    ctx = text.prompt_embeds[:, 1:5]  # the X embeddings themselves: the CoOp splice must be the identity
    with torch.no_grad():
        spliced = encode_prompts(backbone, ctx, text.prompt_ids, text.prompt_embeds)
        direct = backbone.encode_text(text.prompt_ids)
    assert torch.allclose(spliced, direct, atol=1e-5)


def test_one_backward_gives_every_prompt_generator_parameter_a_gradient(backbone, episode_tokens):
    module = _module(backbone, align_loss_weight=0.5)
    support, query = (t.clone().requires_grad_(True) for t in episode_tokens)
    out = module(backbone, support, query, NAMES, _support_labels())
    assert out["support_text"].shape == (WAY, backbone.embed_dim)
    assert out["query_text"].shape == (WAY * QUERY_PER_CLASS, WAY, backbone.embed_dim)
    assert out["align_loss"].item() > 0
    target = torch.randn_like(out["query_text"])
    loss = (out["query_text"] * target).sum() + out["support_text"].square().sum() + out["align_loss"]
    loss.backward()
    for name, param in module.prompt_generator.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert support.grad.abs().sum() > 0  # region features carry gradient back to the visual tokens


def test_query_text_uses_no_label(backbone, episode_tokens):
    module = _module(backbone)
    support, query = episode_tokens
    order = torch.randperm(len(query), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = module(backbone, support, query, NAMES, _support_labels())
        relabelled = module(backbone, support, query, NAMES, _support_labels().roll(SHOT))
        permuted = module(backbone, support, query[order], NAMES, _support_labels())["query_text"]
    # Support labels (the only labels the module is given) steer the support anchors, never the queries.
    assert torch.allclose(base["query_text"], relabelled["query_text"], atol=1e-6)
    assert not torch.allclose(base["regions"]["support"]["interactions"],
                              relabelled["regions"]["support"]["interactions"])
    assert torch.allclose(base["query_text"][order], permuted, atol=1e-5)  # each query depends on itself only


def test_output_is_deterministic_for_a_fixed_seed(backbone, episode_tokens):
    support, query = episode_tokens
    runs = []
    for generator in (torch.Generator().manual_seed(0), None, torch.Generator().manual_seed(6)):
        module = _module(backbone)  # default seed AMCAP.SEED = 0 when no generator is passed
        with torch.no_grad():
            runs.append(module(backbone, support, query, NAMES, _support_labels(), generator=generator))
    assert torch.equal(runs[0]["query_text"], runs[1]["query_text"])
    assert torch.equal(runs[0]["support_text"], runs[1]["support_text"])
    assert torch.equal(runs[0]["regions"]["query"]["interactions"], runs[1]["regions"]["query"]["interactions"])
    assert not torch.equal(runs[0]["regions"]["query"]["interactions"], runs[2]["regions"]["query"]["interactions"])


def test_video_tokens_summary_gives_the_full_token_result(backbone, episode_tokens):
    """AMCAP reads key frames and the mean over frames; the summary cached per video changes nothing."""
    from models.amcap import VideoTokens
    from models.amcap.regions import region_features

    module = _module(backbone)
    support, query = episode_tokens
    summary = module.video_tokens(support)
    assert isinstance(summary, VideoTokens) and summary.key.shape == (WAY * SHOT, 2, *support.shape[2:])
    assert summary.mean.shape == (WAY * SHOT, *support.shape[2:])
    masks = torch.rand(WAY * SHOT, 3, *support.shape[2:4]) > 0.5
    torch.testing.assert_close(region_features(summary.mean[:, None], masks), region_features(support, masks))
    with torch.no_grad():
        full = module(backbone, support, query, NAMES, _support_labels(), torch.Generator().manual_seed(0))
        short = module(backbone, summary, module.video_tokens(query), NAMES, _support_labels(),
                       torch.Generator().manual_seed(0))
    for key in ("support_text", "query_text"):
        torch.testing.assert_close(short[key], full[key])


def test_per_video_support_text_and_exact_small_grid(backbone, episode_tokens):
    module = _module(backbone, per_class=False, grid=2, exact=True, num_regions=3, top_k=3)
    support, query = episode_tokens
    with torch.no_grad():
        out = module(backbone, support, query, NAMES, _support_labels())
    assert out["support_text"].shape == (WAY * SHOT, WAY, backbone.embed_dim)
    assert out["align_loss"].item() == 0.0
    regions = out["regions"]["query"]
    assert regions["token_masks"].shape == (WAY * QUERY_PER_CLASS, 3, 8, 8)
    assert int(regions["token_masks"].sum(dim=1).max()) <= 1  # kept regions never overlap
    assert bool(regions["valid"][:, 0].all())  # every video has at least one region


def test_bad_settings_fail_with_the_key_name(backbone):
    with pytest.raises(ValueError, match="AMCAP.REGION_SCORE"):
        _module(backbone, region_score="size")
    with pytest.raises(ValueError, match="AMCAP.NUM_HEADS"):
        _module(backbone, num_heads=3)


@pytest.fixture(scope="module")
def episode_videos(backbone) -> dict[str, torch.Tensor]:
    """Random support videos' tower input [S, T, 3, 64, 64] with their dense tokens and CLIP embeddings."""
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(WAY * SHOT, FRAMES, 3, 64, 64, generator=gen)
    with torch.no_grad():
        out = backbone.encode_frames(images.flatten(0, 1), dense=True)
    return {"images": images, "tokens": out["tokens"].reshape(WAY * SHOT, FRAMES, 8, 8, -1),
            "global": out["global"].reshape(WAY * SHOT, FRAMES, -1)}


def test_masked_regions_are_valued_and_described_by_the_towers_embedding_of_the_region_alone(backbone,
                                                                                             episode_videos):
    """AMCAP.REGION_FEATURE masked: each kept region's feature is the mean over key frames of the CLIP embedding
    of the key frame with only that region's patches visible, and regions are ranked by its cosine with the anchor
    (computed here region by region with encode_masked)."""
    module = _module(backbone, region_feature="masked", num_regions=3)
    v = episode_videos
    tokens = module.video_tokens(v["tokens"], v["global"], v["images"])
    assert tokens.key_images.shape == (WAY * SHOT, 2, 3, 64, 64)
    text = module.class_text(backbone, NAMES)
    labels = _support_labels()
    with torch.no_grad():
        info = module.describe(tokens, text, labels, module.coalitions(None), backbone)
    regions = info["regions"]
    anchor = torch.nn.functional.normalize(text.features.float(), dim=-1)[labels]  # [S, D]
    for video in range(WAY * SHOT):
        partition = regions.labels[video]
        values, features = {}, {}
        for slot in partition.unique().tolist():
            keep = (partition == slot)[torch.arange(64) // 16 * 4 + torch.arange(64) % 8 // 2].reshape(8, 8)
            with torch.no_grad():
                emb = backbone.encode_masked(tokens.key_images[video], keep.expand(2, -1, -1))  # [K, D]
            values[slot] = torch.nn.functional.cosine_similarity(emb, anchor[video][None]).mean()
            features[slot] = emb.mean(dim=0)
        best = sorted(values, key=lambda s: -float(values[s]))[:3]
        assert regions.slots[video][regions.valid[video]].tolist() == best
        for r, slot in enumerate(best):
            torch.testing.assert_close(info["features"][video, r], features[slot], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="REGION_FEATURE masked needs the backbone"):
        module.describe(module.video_tokens(v["tokens"]), text, labels, module.coalitions(None), backbone)


def test_global_query_anchor_is_the_soft_maximum_around_the_videos_clip_embedding(backbone, episode_videos):
    module = _module(backbone, query_anchor="global")
    v = episode_videos
    tokens = module.video_tokens(v["tokens"], v["global"])
    text = module.class_text(backbone, NAMES)
    anchor, weights = module._anchors(tokens, text, None)
    video = torch.nn.functional.normalize(v["global"], dim=-1).mean(dim=1)  # the video's embedding, every key frame
    expected, expected_weights = module.label_free_anchor(video[:, None].expand(-1, 2, -1), text.features.float(), 0.07)
    torch.testing.assert_close(anchor, expected)
    torch.testing.assert_close(weights, expected_weights)
    with pytest.raises(ValueError, match="QUERY_ANCHOR global needs"):
        module._anchors(module.video_tokens(v["tokens"]), text, None)
    with pytest.raises(ValueError, match="AMCAP.QUERY_ANCHOR must be one of"):
        _module(backbone, query_anchor="cls")


def test_word_token_features_are_each_name_words_own_class_text(backbone):
    """AMCAP.TOKEN_FEATURE word: a name token's feature is the text embedding of the template around that word
    alone ("a photo of archery." for the token of "archery"); other tokens keep the class text's outputs."""
    contextual = build_class_text(backbone, NAMES, "a photo of {}.", 4)
    word = build_class_text(backbone, NAMES, "a photo of {}.", 4, token_feature="word")
    with torch.no_grad():
        archery = backbone.encode_text(backbone.tokenize(["a photo of archery."]))[0]
        jumping = backbone.encode_text(backbone.tokenize(["a photo of jumping."]))[0]
    torch.testing.assert_close(word.token_features[2][word.name_mask[2]][0], archery)
    torch.testing.assert_close(word.token_features[0][word.name_mask[0]][0], jumping)
    torch.testing.assert_close(word.token_features[~word.name_mask], contextual.token_features[~word.name_mask])
    torch.testing.assert_close(word.features, contextual.features)
    with pytest.raises(ValueError, match="AMCAP.TOKEN_FEATURE must be one of"):
        _module(backbone, token_feature="sentence")


def test_value_saliency_picks_the_best_kept_regions_for_every_class(backbone, episode_tokens):
    """AMCAP.SALIENCY value: the salient regions are the first TOP_K kept regions (kept in order of their value),
    the same for every class; tokens: each class's best-scoring regions."""
    support, query = episode_tokens
    module = _module(backbone, saliency="value", top_k=2)
    text = module.class_text(backbone, NAMES)
    with torch.no_grad():
        info = module.describe(query, text, None, module.coalitions(None))
    assert info["selected"].tolist() == [[[0, 1]] * WAY] * len(query)
    assert torch.equal(info["selected_valid"], info["regions"].valid[:, None, :2].expand(-1, WAY, -1))
    scores = info["regions"].scores
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # kept in order of value: the first are the best
    with pytest.raises(ValueError, match="AMCAP.SALIENCY must be one of"):
        _module(backbone, saliency="attention")


def test_motion_saliency_picks_the_kept_regions_whose_tokens_change_most_and_motion_score_keeps_them(
        backbone, episode_tokens):
    """AMCAP.SALIENCY motion: a region's motion is the mean over its tokens of the L2 change between consecutive
    frames (computed here by hand); the salient regions are the kept ones that move most, for every class. With
    REGION_SCORE motion the kept regions themselves are the most moving parts of the partition."""
    support, _ = episode_tokens
    tokens = support[:, :1].repeat(1, FRAMES, 1, 1, 1) + 0.01 * support  # nearly still videos
    tokens[:, :, 2:4, 4:6] += torch.arange(FRAMES, dtype=tokens.dtype)[None, :, None, None, None] * 0.5  # cell 6
    text = _module(backbone).class_text(backbone, NAMES)
    labels = _support_labels()
    motion = (tokens[:, 1:] - tokens[:, :-1]).norm(dim=-1).mean(dim=1)  # [V, 8, 8]
    for region_score in ("value", "motion"):
        module = _module(backbone, saliency="motion", region_score=region_score, num_regions=3, top_k=2)
        with torch.no_grad():
            info = module.describe(module.video_tokens(tokens), text, labels, module.coalitions(None))
        regions = info["regions"]
        for video in range(WAY * SHOT):
            kept = [r for r in range(3) if regions.valid[video, r]]
            moves = {r: float(motion[video][regions.token_masks[video, r]].mean()) for r in kept}
            expected = sorted(kept, key=lambda r: -moves[r])[:2]
            valid = info["selected_valid"][video, 0]
            assert info["selected"][video, 0][valid].tolist() == expected
            assert bool((info["selected"][video] == info["selected"][video, :1]).all())  # the same for every class
            if region_score == "motion":  # the moving cell's region is kept, and first
                partition_motion = {int(s): float(motion[video][(regions.labels[video] == s)[
                    torch.arange(64) // 16 * 4 + torch.arange(64) % 8 // 2].reshape(8, 8)].mean())
                    for s in regions.labels[video].unique()}
                best = max(partition_motion, key=partition_motion.get)
                assert int(regions.slots[video, 0]) == best
                assert bool(regions.token_masks[video, 0, 2, 4])
