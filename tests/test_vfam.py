"""VFAM: zero gate = baseline, gradients, masks, temporal attention, RoI/crop geometry, all modes on an episode."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.vfam import (
    VFAM,
    add_vfam_config,
    crop_entities,
    crop_frames_to_main_track,
    main_track_boxes,
    roi_entity_features,
)
from utils.config import CfgNode

B, T, K, D, F = 2, 4, 3, 16, 24


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    frame_global = torch.randn(B, T, D, generator=g)
    frame_desc = torch.randn(B, T, F, generator=g)
    entities = torch.randn(B, T, K, D, generator=g)
    mask = torch.rand(B, T, K, generator=g) > 0.4
    mask[0, 0] = False  # a frame without entities
    mask[0, 1, 0] = True  # slot 0 of video 0 present at frames 1..3 (temporal test)
    mask[0, 2, 0] = True
    mask[0, 3, 0] = True
    mask[1] = False  # a video without tracks
    return frame_global, frame_desc, entities, mask


def _vfam(**kwargs) -> VFAM:
    torch.manual_seed(0)
    return VFAM(dim=D, out_dim=F, num_heads=4, **kwargs).eval()


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_zero_gate_returns_baseline_descriptor_bit_identical(gate: str) -> None:
    frame_global, frame_desc, entities, mask = _inputs()
    out = _vfam(gate=gate)(frame_global, frame_desc, entities, mask)
    assert torch.equal(out, frame_desc)


def test_frames_and_videos_without_entities_keep_baseline_with_open_gate() -> None:
    frame_global, frame_desc, entities, mask = _inputs()
    vfam = _vfam()
    with torch.no_grad():
        vfam.gate.fill_(0.7)
    out = vfam(frame_global, frame_desc, entities, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], frame_desc[1])  # video without tracks
    assert torch.equal(out[0, 0], frame_desc[0, 0])  # frame without entities
    assert not torch.allclose(out[0, 1:], frame_desc[0, 1:])  # entities do change the descriptor


def test_gradients_reach_gate_attention_and_projection() -> None:
    frame_global, frame_desc, entities, mask = _inputs()
    vfam = _vfam()
    with torch.no_grad():
        vfam.gate.fill_(0.5)
    vfam(frame_global, frame_desc, entities, mask).pow(2).sum().backward()
    for name in ("gate", "time_attn.in_proj_weight", "frame_attn.in_proj_weight", "frame_attn.out_proj.weight",
                 "proj.weight", "entity_norm.weight"):
        grad = dict(vfam.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_gate_gets_gradient_at_zero_and_all_masked_input_is_finite() -> None:
    frame_global, frame_desc, entities, mask = _inputs()
    vfam = _vfam()
    vfam(frame_global, frame_desc, entities, mask).sum().backward()
    assert vfam.gate.grad.abs().sum() > 0
    vfam.zero_grad()
    entities.requires_grad_(True)
    none = torch.zeros_like(mask)
    with torch.no_grad():
        vfam.gate.fill_(1.0)
    out = vfam(frame_global, frame_desc, entities, none)
    out.sum().backward()
    assert torch.equal(out, frame_desc)
    assert all(torch.isfinite(p.grad).all() for p in vfam.parameters() if p.grad is not None)
    assert torch.equal(entities.grad, torch.zeros_like(entities))


@pytest.mark.parametrize("temporal", [True, False])
def test_masked_entities_contribute_nothing(temporal: bool) -> None:
    frame_global, frame_desc, entities, mask = _inputs()
    vfam = _vfam(temporal=temporal)
    with torch.no_grad():
        vfam.gate.fill_(0.5)
    changed = torch.where(mask[..., None], entities, torch.full_like(entities, float("nan")))
    changed[~mask] = torch.randn_like(changed[~mask]) * 100  # arbitrary values where masked
    assert torch.equal(vfam(frame_global, frame_desc, entities, mask), vfam(frame_global, frame_desc, changed, mask))


def test_temporal_attention_mixes_each_track_over_time() -> None:
    frame_global, frame_desc, entities, mask = _inputs()
    other = entities.clone()
    other[0, 1, 0] = torch.randn(D, generator=torch.Generator().manual_seed(5))  # slot 0, video 0, frame 1 only
    for temporal, expect_change in ((True, True), (False, False)):
        vfam = _vfam(temporal=temporal)
        with torch.no_grad():
            vfam.gate.fill_(0.5)
        a = vfam(frame_global, frame_desc, entities, mask)
        b = vfam(frame_global, frame_desc, other, mask)
        assert not torch.allclose(a[0, 1], b[0, 1])  # the changed frame itself always moves
        assert (not torch.allclose(a[0, 3], b[0, 3])) == expect_change  # frame 3 sees it only along the track


def test_roi_features_average_the_box_on_the_token_grid() -> None:
    h, w = 6, 8
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    # Channel 0 = x, channel 1 = y of each token's cell centre: bilinear sampling of a linear field is exact, so
    # the pooled feature is the box centre (for boxes away from the border).
    tokens = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)[None]  # [1,h,w,2]
    boxes = torch.tensor([[[0.2, 0.25, 0.6, 0.75], [0.5, 0.3, 0.8, 0.6], [float("nan"), 0, 0, 0]]])
    mask = torch.tensor([[True, True, False]])
    feats = roi_entity_features(tokens, boxes, mask, roi_size=2)
    assert feats.shape == (1, 3, 2)
    torch.testing.assert_close(feats[0, 0], torch.tensor([0.4, 0.5]), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[0, 1], torch.tensor([0.65, 0.45]), atol=1e-5, rtol=0)
    assert torch.equal(feats[0, 2], torch.zeros(2))


def test_crop_entities_full_box_recovers_frame_and_masks_zero() -> None:
    frames = torch.randn(2, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, 0.25, 0.75, 0.75]]).expand(2, 2, 4)
    mask = torch.tensor([[True, True], [True, False]])
    crops = crop_entities(frames, boxes, mask, size=16)
    assert crops.shape == (2, 2, 3, 16, 16)
    torch.testing.assert_close(crops[:, 0], frames, atol=1e-5, rtol=0)
    half = crop_entities(frames, boxes, mask, size=8)[0, 1]  # centre 8x8 pixels at 1:1 scale
    torch.testing.assert_close(half, frames[0, :, 4:12, 4:12], atol=1e-5, rtol=0)
    assert torch.equal(crops[1, 1], torch.zeros(3, 16, 16))


def test_main_track_is_the_slot_present_most_and_crop_is_square_union() -> None:
    boxes = torch.zeros(2, 4, 2, 4)
    boxes[0, :, 0] = torch.tensor([0.1, 0.1, 0.2, 0.2])
    boxes[0, :, 1] = torch.tensor([[0.4, 0.5, 0.5, 0.6], [0.45, 0.5, 0.6, 0.7], [0.5, 0.5, 0.6, 0.6],
                                   [0.9, 0.9, 1.0, 1.0]])
    mask = torch.zeros(2, 4, 2, dtype=torch.bool)
    mask[0, :1, 0] = True  # slot 0 in one frame, slot 1 in three (its 4th box is masked, so ignored)
    mask[0, :3, 1] = True
    crop, has_track = main_track_boxes(boxes, mask, margin=0.0)
    assert has_track.tolist() == [True, False]
    # union of slot 1 = [0.4,0.5,0.6,0.7] (0.2 x 0.2), already square
    torch.testing.assert_close(crop[0], torch.tensor([0.4, 0.5, 0.6, 0.7]))
    torch.testing.assert_close(crop[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    wide, _ = main_track_boxes(boxes, mask, margin=0.5)  # side 0.4, centred at (0.5, 0.6)
    torch.testing.assert_close(wide[0], torch.tensor([0.3, 0.4, 0.7, 0.8]))


def test_crop_frames_zooms_on_main_track_and_leaves_trackless_videos() -> None:
    frames = torch.randn(2, 2, 3, 16, 16)
    boxes = torch.tensor([0.25, 0.25, 0.75, 0.75]).expand(2, 2, 1, 4)
    mask = torch.tensor([[[True], [True]], [[False], [False]]])
    out = crop_frames_to_main_track(frames, boxes, mask, margin=0.0)
    assert out.shape == frames.shape
    assert torch.equal(out[1], frames[1])
    # = bilinear 2x upsampling of the centre 8x8 block (border pixels differ: RoIAlign sees the pixels outside)
    expected = nn.functional.interpolate(frames[0, :, :, 4:12, 4:12], size=(16, 16), mode="bilinear",
                                         align_corners=False)
    torch.testing.assert_close(out[0, ..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


class TinyBackbone(nn.Module):
    """Stand-in with CLIPBackbone's encode_frames API: 4x4 patch conv, mean-pooled global token."""

    embed_dim = D

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, D, kernel_size=4, stride=4)

    def encode_frames(self, images: torch.Tensor, dense: bool = False) -> dict:
        tokens = self.patch(images).permute(0, 2, 3, 1)  # [N,h,w,D]
        out = {"global": tokens.mean(dim=(1, 2))}
        if dense:
            out["tokens"] = tokens
        return out


def _tiny_episode_videos() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    videos = torch.randn(3, T, 3, 16, 16, generator=g)
    xy = torch.rand(3, T, K, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.3], dim=-1)
    mask = torch.rand(3, T, K, generator=g) > 0.3
    mask[2] = False
    return videos, boxes, mask


@pytest.mark.parametrize("mode", ["roi", "crop", "crop_frames"])
def test_all_modes_run_on_a_tiny_episode(mode: str) -> None:
    backbone = TinyBackbone()
    videos, boxes, mask = _tiny_episode_videos()
    vfam = VFAM(dim=D, out_dim=D, num_heads=2, mode=mode, crop_size=16)
    with torch.no_grad():
        vfam.gate.fill_(0.3)
    feats = vfam.encode(backbone, videos, boxes, mask)
    assert feats["global"].shape == (3, T, D) and feats["tokens"].shape == (3, T, 4, 4, D)
    assert feats["entity_feats"].shape == (3, T, K, D) and feats["entity_mask"].shape == (3, T, K)
    out = vfam(feats["global"], feats["global"], feats["entity_feats"], feats["entity_mask"])
    out.sum().backward()
    assert torch.isfinite(out).all() and backbone.patch.weight.grad.abs().sum() > 0
    baseline = backbone.encode_frames(videos[2])["global"]
    torch.testing.assert_close(out[2], baseline)  # the video without tracks takes the baseline path
    if mode == "crop_frames":
        assert not feats["entity_mask"].any()
    else:
        assert torch.equal(feats["entity_mask"], mask) and vfam.proj.weight.grad.abs().sum() > 0
    no_tracks = vfam.encode(backbone, videos, None, None)
    assert not no_tracks["entity_mask"].any()


def test_masked_boxes_change_nothing_in_roi_and_crop_modes() -> None:
    backbone = TinyBackbone()
    videos, boxes, mask = _tiny_episode_videos()
    moved = torch.where(mask[..., None], boxes, torch.rand_like(boxes))
    for mode in ("roi", "crop"):
        vfam = VFAM(dim=D, out_dim=D, num_heads=2, mode=mode, crop_size=16).eval()
        a, b = vfam.encode(backbone, videos, boxes, mask), vfam.encode(backbone, videos, moved, mask)
        assert torch.equal(a["entity_feats"], b["entity_feats"]), mode


def test_config_keys_and_errors() -> None:
    cfg = CfgNode()
    add_vfam_config(cfg)
    assert cfg.VFAM.ENABLE is False and cfg.VFAM.MODE == "roi"
    kwargs = VFAM.from_config(cfg, dim=D, out_dim=F)
    vfam = VFAM(**kwargs)
    assert vfam.gate.shape == (1,) and vfam.temporal == cfg.VFAM.TEMPORAL
    with pytest.raises(ValueError, match="VFAM.MODE"):
        VFAM(dim=D, out_dim=F, mode="boxes")
    with pytest.raises(ValueError, match="VFAM.NUM_HEADS"):
        VFAM(dim=D, out_dim=F, num_heads=5)
    with pytest.raises(ValueError, match="VFAM.ATTEND"):
        VFAM(dim=D, out_dim=F, attend="track")
    with pytest.raises(ValueError, match="VFAM.FUSION"):
        VFAM(dim=D, out_dim=F, fusion="concat")
    assert cfg.VFAM.ATTEND == "frame" and cfg.VFAM.FUSION == "residual" and not cfg.VFAM.ENTITY_MOTION
    videos, boxes, mask = _tiny_episode_videos()
    with pytest.raises(ValueError, match="VFAM.CROP_SIZE"):
        VFAM(dim=D, out_dim=D, num_heads=2, mode="crop", crop_size=224).encode(TinyBackbone(), videos, boxes, mask)


@pytest.fixture(scope="module")
def tiny_clip() -> nn.Module:
    from models.clip import CLIPBackbone

    torch.manual_seed(0)
    return CLIPBackbone("FSAR-Tiny-ViT")


@pytest.mark.parametrize("mode", ["roi", "crop", "crop_frames"])
def test_modes_with_the_tiny_clip_backbone(tiny_clip: nn.Module, mode: str) -> None:
    size = tiny_clip.image_size[0]
    g = torch.Generator().manual_seed(2)
    videos = torch.randn(2, T, 3, size, size, generator=g)
    xy = 0.3 + torch.rand(2, T, K, 2, generator=g) * 0.1  # small boxes: crop_frames really zooms in
    boxes, mask = torch.cat([xy, xy + 0.25], dim=-1), torch.rand(2, T, K, generator=g) > 0.3
    mask[1] = False
    dim = tiny_clip.embed_dim
    vfam = VFAM(dim=dim, out_dim=dim, num_heads=4, mode=mode, crop_size=size)
    feats = vfam.encode(tiny_clip, videos, boxes, mask)
    assert feats["tokens"].shape == (2, T, *tiny_clip.grid_size, dim)
    assert torch.equal(vfam(feats["global"], feats["global"], feats["entity_feats"], feats["entity_mask"]),
                       feats["global"])  # untrained VFAM = baseline
    with torch.no_grad():
        vfam.gate.fill_(0.5)
    out = vfam(feats["global"], feats["global"], feats["entity_feats"], feats["entity_mask"])
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], feats["global"][1])  # the video without tracks
    baseline = tiny_clip.encode_frames(videos[0])["global"]
    # crop_frames changes the backbone's input; roi/crop change the fused descriptor
    assert not torch.allclose(out[0], baseline, atol=1e-4)
    if mode != "crop_frames":
        assert vfam.frame_attn.in_proj_weight.grad.abs().sum() > 0


def test_attention_weights_are_the_fused_ones_over_the_slots_in_view() -> None:
    """VFAM.attention: per frame a distribution over the slots in view (0 for masked slots and frames without
    entities), and the context VFAM fuses is exactly that mixture of the attention's values."""
    frame_global, frame_desc, entities, mask = _inputs()
    vfam = _vfam(temporal=False)
    with torch.no_grad():
        weights = vfam.attention(frame_global, entities, mask)  # [B, T, K]
        vfam.gate.fill_(1.0)
        fused = vfam(frame_global, frame_desc, entities, mask) - frame_desc
        attn = vfam.frame_attn
        values = torch.nn.functional.linear(vfam.entity_norm(entities * mask[..., None]),
                                            attn.in_proj_weight[2 * D:], attn.in_proj_bias[2 * D:])
        # the same attention by hand, head by head
        q = torch.nn.functional.linear(vfam.query_norm(frame_global), attn.in_proj_weight[:D], attn.in_proj_bias[:D])
        k = torch.nn.functional.linear(vfam.entity_norm(entities * mask[..., None]), attn.in_proj_weight[D:2 * D],
                                       attn.in_proj_bias[D:2 * D])
        heads, hd = attn.num_heads, D // attn.num_heads
        scores = torch.einsum("bthe,btkhe->bthk", q.reshape(B, T, heads, hd), k.reshape(B, T, K, heads, hd))
        per_head = (scores / hd ** 0.5).masked_fill(~mask[:, :, None], float("-inf")).softmax(-1)
        context = torch.einsum("bthk,btkhe->bthe", per_head, values.reshape(B, T, K, heads, hd)).reshape(B, T, D)
        expected = vfam.proj(attn.out_proj(context))
    present = mask.any(-1)
    torch.testing.assert_close(weights[present].sum(-1), torch.ones(int(present.sum())))
    assert bool((weights[~mask] == 0).all())
    torch.testing.assert_close(weights[present], per_head.mean(2)[present])
    torch.testing.assert_close(fused[present], expected[present], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- motion (issue 29)
def test_track_motion_is_each_boxes_step_to_the_next_frame_by_hand() -> None:
    from models.vfam import track_motion

    boxes = torch.zeros(1, 3, 2, 4)
    boxes[0, :, 0] = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.2, 0.1, 0.4, 0.3], [0.2, 0.0, 0.5, 0.3]])
    boxes[0, :, 1] = torch.tensor([0.5, 0.5, 0.6, 0.6])
    mask = torch.tensor([[[True, True], [True, False], [True, True]]])
    motion = track_motion(boxes, mask)
    # slot 0: centre (0.2,0.2) -> (0.3,0.2) -> (0.35,0.15); sqrt(area) 0.2 -> 0.2 -> 0.3
    expected0 = torch.tensor([[0.1, 0.0, 0.0], [0.05, -0.05, 0.1], [0.05, -0.05, 0.1]])
    torch.testing.assert_close(motion[0, :, 0], expected0)
    assert bool((motion[0, :, 1] == 0).all())  # absent at frame 1: no step on either side of it


def _moving_inputs() -> tuple[torch.Tensor, ...]:
    """One video: slot 1 moves right every frame, slots 0 and 2 stay; all in view."""
    frame_global, frame_desc, entities, _ = _inputs()
    mask = torch.ones(B, T, K, dtype=torch.bool)
    motion = torch.zeros(B, T, K, 3)
    motion[:, :, 1, 0] = 0.05
    return frame_global, frame_desc, entities, mask, motion


def test_motion_attention_weights_one_score_per_track_over_the_slots_in_view() -> None:
    frame_global, frame_desc, entities, mask, motion = _moving_inputs()
    mask[0, 2, 1] = False  # the moving track leaves view in frame 2 of video 0
    mask[1] = False  # a video without tracks
    vfam = _vfam(attend="motion", temporal=False)
    weights = vfam.attention(frame_global, entities, mask, motion)
    assert bool((weights[~mask] == 0).all())
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(T))
    # the same track score in every frame: frames 0 and 3 (all in view) have the same weights
    torch.testing.assert_close(weights[0, 0], weights[0, 3])
    # frame 2 renormalises the two tracks in view in the same ratio
    torch.testing.assert_close(weights[0, 2, 0] / weights[0, 2, 2], weights[0, 0, 0] / weights[0, 0, 2])
    out = vfam(frame_global, frame_desc, entities, mask, motion)
    assert torch.isfinite(out).all() and torch.equal(out[1], frame_desc[1])


def test_replace_fusion_starts_as_the_weighted_unit_entity_tokens_plus_motion_embedding() -> None:
    frame_global, _, entities, mask, motion = _moving_inputs()
    vfam = VFAM(dim=D, out_dim=D, num_heads=4, temporal=False, attend="motion", entity_motion=True,
                fusion="replace", motion_scale=10.0).eval()
    assert vfam.gate is None
    frame_desc = torch.randn(B, T, D)
    with torch.no_grad():
        out = vfam(frame_global, frame_desc, entities, mask, motion)
        weights = vfam.attention(frame_global, entities, mask, motion)
        tokens = torch.nn.functional.normalize(entities, dim=-1) + vfam.motion_embed(10.0 * motion)
    torch.testing.assert_close(out, torch.einsum("btk,btkd->btd", weights, tokens))  # proj is the identity
    with pytest.raises(ValueError, match="entity_motion"):
        vfam(frame_global, frame_desc, entities, mask)


def test_motion_attention_learns_to_pick_the_moving_track_from_episode_labels_alone() -> None:
    """Two classes differ only in how the acting track moves (right vs up); a still distractor with the other
    class's look sits in every video. Trained on the classes' labels (never told which slot acts), the track
    weights go to the moving slot and the descriptors separate the classes."""
    g = torch.Generator().manual_seed(0)
    n, looks = 32, torch.randn(2, D, generator=g)
    labels = torch.arange(n) % 2
    entities = torch.zeros(n, T, 2, D)
    motion = torch.zeros(n, T, 2, 3)
    actor = torch.randint(0, 2, (n,), generator=g)  # which slot acts varies
    for i in range(n):
        a = int(actor[i])
        entities[i, :, a] = looks[0]  # the actor always looks the same: only its motion tells the class
        entities[i, :, 1 - a] = looks[1] + 0.1 * torch.randn(D, generator=g)
        motion[i, :, a, int(labels[i])] = 0.04
        motion[i, :, 1 - a] = 0.004 * torch.randn(T, 3, generator=g)  # a distractor's wander
    mask = torch.ones(n, T, 2, dtype=torch.bool)
    torch.manual_seed(0)
    vfam = VFAM(dim=D, out_dim=D, num_heads=4, temporal=False, attend="motion", entity_motion=True, fusion="replace")
    head = nn.Linear(D, 2)
    opt = torch.optim.Adam([*vfam.parameters(), *head.parameters()], lr=1e-2)
    frame_global, frame_desc = torch.zeros(n, T, D), torch.zeros(n, T, D)
    with torch.no_grad():
        untrained = vfam.attention(frame_global, entities, mask, motion)[:, 0][torch.arange(n), actor]
    assert float(untrained.max()) < 0.7  # nothing picks the actor before training
    for _ in range(150):
        out = vfam(frame_global, frame_desc, entities, mask, motion).mean(1)
        loss = nn.functional.cross_entropy(head(out), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        weights = vfam.attention(frame_global, entities, mask, motion)[:, 0]  # [n, 2]
        accuracy = (head(vfam(frame_global, frame_desc, entities, mask, motion).mean(1)).argmax(1) == labels)
    on_actor = weights[torch.arange(n), actor]
    assert float(on_actor.min()) > 0.7, on_actor  # at least 2.3x the distractor's weight in every video
    assert float(accuracy.float().mean()) == 1.0


def test_track_temperature_divides_the_track_scores_before_their_softmax() -> None:
    frame_global, _, entities, mask, motion = _moving_inputs()
    torch.manual_seed(0)
    warm = VFAM(dim=D, out_dim=F, num_heads=4, temporal=False, attend="motion")
    sharp = VFAM(dim=D, out_dim=F, num_heads=4, temporal=False, attend="motion", track_temperature=0.1)
    sharp.load_state_dict(warm.state_dict())
    with torch.no_grad():
        w1 = warm.attention(frame_global, entities, mask, motion)[:, 0]  # every slot in view: the track weights
        w01 = sharp.attention(frame_global, entities, mask, motion)[:, 0]
    torch.testing.assert_close(w01.log() - w01.log()[:, :1], 10 * (w1.log() - w1.log()[:, :1]), rtol=1e-4, atol=1e-4)
