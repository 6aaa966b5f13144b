"""The heads' parts alone (models/heads/parts.py), each built from a few numbers and checked on tiny tensors against
values written out here (CLIP-FSAR's equations), and the one place that builds them from config
(models/heads/parts_from_config.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.clip import CLIPBackbone
from models.heads.parts import (
    ClassTextSource,
    FrameEncoder,
    OTAMMatcher,
    TemporalBlock,
    TemporalModulator,
    TextEvalRule,
    VideoTextLoss,
    change_to_next,
    class_codes,
    class_means,
    lineage_cosine,
    with_motion,
)
from models.heads.parts_from_config import build_prototype_parts, build_vfam
from models.otam import otam_distance
from models.text_cache import ClassTextCache
from runs.config import load_config
from utils.config import ConfigError

TINY = ["VIDEO.HEAD.BACKBONE_NAME", "FSAR-Tiny-ViT", "VIDEO.HEAD.PRETRAINED", ""]


# ---------------------------------------------------------------------------------------------- shared math
def test_lineage_cosine_adds_epsilon_to_the_norm_product():
    x = torch.tensor([[3.0, 4.0]])  # |x| = 5
    y = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # |y| = 1, 2
    torch.testing.assert_close(lineage_cosine(x, y, 0.01), torch.tensor([[3 / 5.01, 8 / 10.01]]))
    torch.testing.assert_close(lineage_cosine(x, y, 0.0), torch.tensor([[0.6, 0.8]]))


def test_lineage_cosine_pairs_what_its_equation_names():
    videos = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # |.| = 5, 1
    per_video = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 3.0], [4.0, 0.0]]])  # each video its own texts
    expected = torch.tensor([[3 / 5.01, 8 / 10.01], [3 / 3.01, 0.0]])
    torch.testing.assert_close(lineage_cosine(videos, per_video, 0.01, "nd,ncd->nc"), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # computed in fp32 also under autocast, as the lineage does
        assert lineage_cosine(videos, per_video, 0.01, "nd,ncd->nc").dtype == torch.float32


def test_class_means_averages_shots():
    features = torch.arange(12.0).reshape(4, 3)
    torch.testing.assert_close(class_means(features, torch.tensor([1, 0, 1, 0]), 2),
                               torch.tensor([[6.0, 7.0, 8.0], [3.0, 4.0, 5.0]]))


def test_class_means_keeps_trailing_dimensions_and_gives_a_class_without_shots_zeros():
    features = torch.tensor([[[2.0], [4.0]], [[6.0], [0.0]]])  # [S=2, T=2, d=1]
    torch.testing.assert_close(class_means(features, torch.tensor([0, 0]), 2),
                               torch.tensor([[[4.0], [2.0]], [[0.0], [0.0]]]))


def test_frame_motion_appends_each_frames_change_to_the_next():
    frames = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3) ** 2
    out = with_motion(frames)
    assert out.shape == (2, 4, 6)
    assert torch.equal(out[..., :3], frames)
    torch.testing.assert_close(out[:, :3, 3:], frames[:, 1:] - frames[:, :-1])
    torch.testing.assert_close(out[:, 3, 3:], frames[:, 3] - frames[:, 2])  # the last frame repeats the change
    assert torch.equal(with_motion(frames[:, :1])[..., 3:], torch.zeros(2, 1, 3))  # one frame: no change


def test_change_to_next_on_written_out_values():
    x = torch.tensor([[[1.0], [4.0], [9.0]]])  # [B=1, T=3, 1]
    assert torch.equal(change_to_next(x), torch.tensor([[[3.0], [5.0], [5.0]]]))


def test_class_codes_are_orthonormal_seeded_and_unit_beyond_the_width():
    codes = class_codes(12, 64)
    torch.testing.assert_close(codes @ codes.t(), torch.eye(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(class_codes(12, 64), codes, atol=0, rtol=0)  # a fresh seeded generator each call
    assert not torch.allclose(class_codes(12, 64, seed=1), codes)
    wide = class_codes(80, 64)  # more classes than dimensions: unit codes, no longer orthogonal
    torch.testing.assert_close(wide.norm(dim=1), torch.ones(80))


# ---------------------------------------------------------------------------------------------- temporal modulator
def reference_block(x: torch.Tensor, block: TemporalBlock, heads: int) -> torch.Tensor:
    """CLIP-FSAR's Transformer_v1 block written out: x = attn(LN(x)) + x; x = ff(x) + x (eval mode)."""
    batch, length, dim = x.shape
    h = F.layer_norm(x, (dim,), block.norm.weight, block.norm.bias)
    w_q, w_k, w_v = block.attn.qkv.weight.chunk(3)
    q, k, v = ((h @ w.t()).reshape(batch, length, heads, dim // heads).transpose(1, 2) for w in (w_q, w_k, w_v))
    weights = torch.softmax(q @ k.transpose(-1, -2) * (dim // heads) ** -0.5, dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
    x = attended @ block.attn.to_out.weight.t() + block.attn.to_out.bias + x
    first, second = block.ffn[0], block.ffn[3]
    hidden = F.gelu(x @ first.weight.t() + first.bias)
    return hidden @ second.weight.t() + second.bias + x


def test_temporal_block_computes_clip_fsar_transformer_v1():
    torch.manual_seed(0)
    block = TemporalBlock(64, 8, 96, attn_dropout=0.2, ffn_dropout=0.05).eval()
    for p in block.parameters():  # away from the init (LayerNorm 1/0, ...) so every term shows
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 9, 64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference_block(x, block, heads=8))
    # No second LayerNorm, no q/k/v bias: the only parameters are these.
    assert sorted(n for n, _ in block.named_parameters()) == [
        "attn.qkv.weight", "attn.to_out.bias", "attn.to_out.weight", "ffn.0.bias", "ffn.0.weight",
        "ffn.3.bias", "ffn.3.weight", "norm.bias", "norm.weight"]


def test_attention_dropout_drops_the_branch_output_not_the_weights():
    torch.manual_seed(0)
    block = TemporalBlock(64, 8, 96, attn_dropout=0.5, ffn_dropout=0.0)
    x = torch.randn(4, 9, 64)
    captured = []
    block.attn.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        block.eval()(x)
        block.train()(x)
    clean, dropped = captured
    kept = dropped != 0
    assert 0.35 < 1 - kept.float().mean() < 0.65  # about half of the branch output is zeroed
    # The kept entries are the clean output scaled by 1 / (1 - p): dropout on the output, nothing inside attention.
    torch.testing.assert_close(dropped[kept], clean[kept] / 0.5)


def test_one_head_has_no_output_projection_as_in_clip_fsar():
    block = TemporalBlock(16, 1, 32, attn_dropout=0.5, ffn_dropout=0.0)
    assert not any(n.startswith("attn.to_out") for n, _ in block.named_parameters())


def test_a_width_the_heads_do_not_divide_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"VIDEO\.HEAD\.TRANSFORMER_HEADS: transformer width 64 .* 7 heads"):
        TemporalModulator(64, 1, 7, 32, 0.0, 0.0)


def test_modulator_keeps_the_checkpoint_names_and_its_choices():
    modulator = TemporalModulator(16, 2, 2, 8, 0.0, 0.0, text_token=False, merge_before=True)
    assert (modulator.dim, len(modulator), modulator.text_token, modulator.merge_before) == (16, 2, False, True)
    assert "0.attn.qkv.weight" in modulator.state_dict() and "1.ffn.3.bias" in modulator.state_dict()


def test_identity_modulator_prototypes_are_the_shot_means_and_the_text_token_is_dropped():
    """Layer scale 0: the transformer starts as the identity, so prototypes are the class means by hand."""
    support = torch.tensor([[[1.0, 2.0]], [[3.0, 6.0]], [[5.0, 5.0]]])  # [S=3, T=1, d=2]
    text = torch.tensor([[9.0, 9.0], [8.0, 8.0], [7.0, 7.0]])
    labels = torch.tensor([0, 0, 1])
    expected = torch.tensor([[[2.0, 4.0]], [[5.0, 5.0]]])
    for merge_before in (False, True):
        modulator = TemporalModulator(2, 1, 1, 4, 0.0, 0.0, layer_scale=0.0, merge_before=merge_before).eval()
        with torch.no_grad():
            assert torch.equal(modulator.prototypes(support, text, labels, 2), expected)
            assert torch.equal(modulator.modulate(support, text), support)  # [S, T, d]: the token is sliced off


def test_modulator_prototypes_average_shots_before_or_after_the_transformer():
    torch.manual_seed(0)
    support, text, labels = torch.randn(4, 3, 8), torch.randn(4, 8), torch.tensor([1, 0, 1, 0])
    after = TemporalModulator(8, 1, 2, 16, 0.0, 0.0).eval()
    before = TemporalModulator(8, 1, 2, 16, 0.0, 0.0, merge_before=True).eval()
    before.load_state_dict(after.state_dict())
    with torch.no_grad():
        modulated = after(torch.cat([support, text[:, None]], dim=1))[:, :3]  # frames + token, token dropped
        torch.testing.assert_close(after.prototypes(support, text, labels, 2), class_means(modulated, labels, 2))
        merged = torch.cat([class_means(support, labels, 2), class_means(text, labels, 2)[:, None]], dim=1)
        torch.testing.assert_close(before.prototypes(support, text, labels, 2), before(merged)[:, :3])
        # the class-text token changes the supports' frames; without one they pass as queries do
        assert not torch.allclose(after.modulate(support, text), after(support))
        assert torch.equal(after.modulate(support, None), after(support))


# ---------------------------------------------------------------------------------------------- matching, losses
def test_one_frame_otam_distance_is_one_minus_the_lineage_cosine_per_direction():
    """With one frame OTAM's table is the padded running sum, so each direction's distance is the frame distance."""
    queries = torch.tensor([[[3.0, 4.0]]])  # [Q=1, T=1, d=2]
    prototypes = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # [C=2, T=1, d=2]
    frame_dist = torch.tensor([[1 - 3 / 5.01, 1 - 8 / 10.01]])
    torch.testing.assert_close(OTAMMatcher(0.5, 0.01)(queries, prototypes), 2 * frame_dist)
    torch.testing.assert_close(OTAMMatcher(0.5, 0.01, bidirectional=False)(queries, prototypes), frame_dist)
    torch.testing.assert_close(OTAMMatcher(0.5, 0.0)(queries, prototypes), 2 * torch.tensor([[0.4, 0.2]]))


def test_matcher_frame_distances_use_the_lineage_cosine():
    torch.manual_seed(0)
    queries, prototypes = torch.randn(2, 4, 8), torch.randn(3, 4, 8)
    q_norm, p_norm = queries.norm(dim=-1), prototypes.norm(dim=-1)
    cos = torch.einsum("qtd,csd->qcts", queries, prototypes) / (q_norm[:, None, :, None] * p_norm[None, :, None]
                                                                + 0.01)
    torch.testing.assert_close(OTAMMatcher(0.5, 0.01)(queries, prototypes), otam_distance(1 - cos, 0.5))
    exact = torch.einsum("qtd,csd->qcts", queries / q_norm[..., None], prototypes / p_norm[..., None])
    torch.testing.assert_close(OTAMMatcher(0.5, 0.0)(queries, prototypes), otam_distance(1 - exact, 0.5))


def test_video_text_loss_on_written_out_values():
    scale = torch.tensor(2.0)
    video, texts, labels = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0])
    expected = 0.5 * math.log(1 + math.exp(-2.0))  # CE of logits [2, 0] (cosines 1 and 0), label 0
    torch.testing.assert_close(VideoTextLoss(0.5, 0.0)(scale, video, texts, labels), torch.tensor(expected))
    # per-video class texts [V, N, D]: the same numbers
    torch.testing.assert_close(VideoTextLoss(0.5, 0.0)(scale, video, texts[None], labels), torch.tensor(expected))


def test_text_eval_rule_on_written_out_values():
    scale, query, texts = torch.tensor(1.0), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    dists = torch.tensor([[0.0, 8.0]])  # 8 frames: visual logits (8 - d) / 8 = [1, 0]
    e = math.e
    probs = torch.tensor([[e / (e + 1), 1 / (e + 1)]])  # softmax([1, 0]), text and visual alike here
    assert not TextEvalRule().active
    torch.testing.assert_close(TextEvalRule(eval_text=True)(scale, dists, query, texts, 8), probs)
    # COMBINE: text^c * visual^(1-c) = probs^0.5 * probs^0.5
    torch.testing.assert_close(TextEvalRule(combine=True, text_coff=0.5)(scale, dists, query, texts, 8), probs)
    visual_only = TextEvalRule(combine=True, text_coff=0.0)(scale, torch.tensor([[8.0, 0.0]]), query, texts, 8)
    torch.testing.assert_close(visual_only, probs.flip(1))


# ---------------------------------------------------------------------------------------------- frame encoder, text
def test_frame_encoder_widths_and_descriptor_motion():
    assert FrameEncoder("global").descriptor_dim(64) == 64
    patch = FrameEncoder("patch_map", patch_pool=3, motion="difference")
    assert (patch.descriptor_dim(64), patch.input_dim(64)) == (64 * 9, 2 * 64 * 9)
    frames = torch.tensor([[[1.0], [4.0]]])
    assert torch.equal(patch.add_motion(frames), torch.tensor([[[1.0, 3.0], [4.0, 3.0]]]))
    for motion in ("none", "pixel_difference"):  # the descriptor is left as it is
        assert torch.equal(FrameEncoder(motion=motion).add_motion(frames), frames)
        assert FrameEncoder(motion=motion).input_dim(64) == 64


@pytest.mark.parametrize("build, key", [
    (lambda: FrameEncoder(frame_feature="cls"), "VIDEO.HEAD.FRAME_FEATURE"),
    (lambda: FrameEncoder(motion="flow"), "VIDEO.HEAD.FRAME_MOTION"),
    (lambda: ClassTextSource("a photo"), "VIDEO.HEAD.PROMPT_TEMPLATE"),
    (lambda: VideoTextLoss(targets="random"), "TRAIN.VIDEO_TEXT_TARGETS"),
])
def test_invalid_part_options_are_rejected_naming_the_key(build, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build()


# ---------------------------------------------------------------------------------------------- built from config
@pytest.fixture(scope="module")
def backbone() -> CLIPBackbone:
    return CLIPBackbone("FSAR-Tiny-ViT")


def test_config_keys_reach_the_parts(backbone):
    cfg = load_config(None, [*TINY, "VIDEO.HEAD.FRAME_FEATURE", "patch_map", "VIDEO.HEAD.PATCH_POOL", "1",
                             "TRAIN.TRANSFORMER_DEPTH", "2", "VIDEO.HEAD.TRANSFORMER_MLP_DIM", "32",
                             "VIDEO.HEAD.SUPPORT_TEXT_TOKEN", "False", "TRAIN.MERGE_BEFORE", "True",
                             "TRAIN.SINGLE_DIRECT", "True", "VIDEO.HEAD.OTAM_LAMBDA", "0.25",
                             "VIDEO.HEAD.COSINE_EPS", "0.0", "TRAIN.COMBINE", "True", "TRAIN.TEXT_COFF", "0.5",
                             "TRAIN.USE_CLASSIFICATION_VALUE", "2.0", "TRAIN.VIDEO_TEXT_TARGETS", "orthogonal",
                             "VIDEO.HEAD.PROMPT_TEMPLATE", "a video of {}"])
    cache = ClassTextCache()
    parts = build_prototype_parts(cfg, backbone, keep_tokens=True, text_cache=cache)
    assert parts["frame_encoder"] == FrameEncoder("patch_map", 1, keep_tokens=True)
    temporal = parts["temporal"]
    assert (temporal.dim, len(temporal), temporal.text_token, temporal.merge_before) == (64, 2, False, True)
    assert temporal[0].ffn[0].out_features == 32
    assert parts["matcher"] == OTAMMatcher(0.25, 0.0, bidirectional=False)
    assert parts["text_eval"] == TextEvalRule(eval_text=False, combine=True, text_coff=0.5)
    assert parts["video_text_loss"] == VideoTextLoss(2.0, 0.0, "orthogonal")
    assert parts["class_text"].template == "a video of {}" and parts["class_text"].cache is cache
    # no text token: nothing to map; no projection width: descriptors as they are
    assert isinstance(parts["text_proj"], torch.nn.Identity) and isinstance(parts["frame_proj"], torch.nn.Identity)
    assert parts["backbone"] is backbone and parts["vfam"] is None


@pytest.mark.parametrize("opts, frame_proj, text_proj, width", [
    ([], None, None, 64),  # CLIP-FSAR: the raw text embedding in the joint space of the global frame embedding
    (["VIDEO.HEAD.FRAME_MOTION", "difference"], None, (64, 128), 128),
    (["VIDEO.HEAD.PROJ_DIM", "32"], (64, 32), (64, 32), 32),
    (["VIDEO.HEAD.FRAME_FEATURE", "patch_map"], None, (64, 256), 256),
])
def test_learned_maps_exist_exactly_where_the_text_is_not_the_lineages(backbone, opts, frame_proj, text_proj, width):
    parts = build_prototype_parts(load_config(None, [*TINY, *opts]), backbone)
    for name, shape in (("frame_proj", frame_proj), ("text_proj", text_proj)):
        module = parts[name]
        if shape is None:
            assert isinstance(module, torch.nn.Identity), name
        else:
            assert (module.in_features, module.out_features) == shape, name
    assert parts["temporal"].dim == width


def test_no_video_text_loss_without_its_weight_and_vfam_only_when_enabled(backbone):
    off = load_config(None, [*TINY, "TRAIN.USE_CLASSIFICATION_VALUE", "0.0"])
    assert build_prototype_parts(off, backbone)["video_text_loss"] is None
    assert build_vfam(off, backbone) is None
    vfam = build_vfam(load_config(None, [*TINY, "VFAM.ENABLE", "True", "VIDEO.HEAD.FRAME_FEATURE", "patch_map"]),
                      backbone)
    assert vfam.proj.out_features == 64 * 4  # VFAM fuses into the frame encoder's descriptors
