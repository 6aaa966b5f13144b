"""The prototype flow (models/heads/prototype.py) as a head handed its parts by hand: its logits are the parts'
composition, it reads checkpoints through one method, and its recipes are siblings."""
import ast
from pathlib import Path

import pytest
import torch
from test_head_clipfsar import FRAMES, QUERY, SHOT, WAY, tiny_episode

from models.amcap import AMCAP
from models.clip import CLIPBackbone
from models.heads.base import FewShotHead
from models.heads.clipfsar import CNN_OTAM_CLIPFSAR
from models.heads.mcdp import MCDP_FSAR
from models.heads.parts import (
    ClassTextSource,
    FrameEncoder,
    OTAMMatcher,
    TemporalModulator,
    TextEvalRule,
    VideoTextLoss,
    class_means,
)
from models.text_cache import ClassTextCache
from utils.checkpoint import CheckpointError

HEADS = Path(__file__).resolve().parents[1] / "models" / "heads"


def hand_parts(backbone: CLIPBackbone, **overrides) -> dict:
    """A small head's parts from a few numbers (no config): 64-wide global descriptors, one 2-head block."""
    torch.manual_seed(0)
    parts = dict(backbone=backbone, frame_encoder=FrameEncoder("global"),
                 temporal=TemporalModulator(64, 1, 2, 32, 0.0, 0.0), class_text=ClassTextSource("a video of {}"),
                 matcher=OTAMMatcher(0.5, 0.0, bidirectional=False), text_eval=TextEvalRule())
    return {**parts, **overrides}


@pytest.fixture(scope="module")
def backbone() -> CLIPBackbone:
    torch.manual_seed(0)
    return CLIPBackbone("FSAR-Tiny-ViT").eval()


def test_logits_are_the_composition_of_the_parts_handed_in(backbone):
    head = CNN_OTAM_CLIPFSAR(**hand_parts(backbone)).eval()
    episode = tiny_episode()
    with torch.no_grad():
        logits = head(episode)["logits"]
        videos = backbone.normalise(torch.cat([episode.support_set, episode.target_set]))
        frames = backbone.encode_frames(videos.flatten(0, 1))["global"].reshape(-1, FRAMES, 64)
        support, query = frames[:WAY * SHOT], frames[WAY * SHOT:]
        # each support with its class's "a video of {name}" text token (the template handed in), shots averaged
        texts = backbone.encode_text(backbone.tokenize([f"a video of {n}" for n in episode.class_names]))
        labels = episode.support_labels.long()
        modulated = head.temporal(torch.cat([support, texts[labels][:, None]], dim=1))[:, :FRAMES]
        prototypes = class_means(modulated, labels, WAY)
        expected = -head.matcher(head.temporal(query), prototypes)  # one direction: the matcher handed in
    assert logits.shape == (WAY * QUERY, WAY)
    torch.testing.assert_close(logits, expected)


def test_without_a_video_text_loss_the_text_scale_is_frozen_and_only_otam_ce_trains(backbone):
    head = CNN_OTAM_CLIPFSAR(**hand_parts(backbone)).train()
    assert not head.text_logit_scale.requires_grad
    assert set(head(tiny_episode())["losses"]) == {"otam_ce"}
    with_loss = CNN_OTAM_CLIPFSAR(**hand_parts(backbone, video_text_loss=VideoTextLoss(0.5, 0.0))).train()
    assert with_loss.text_logit_scale.requires_grad
    assert set(with_loss(tiny_episode())["losses"]) == {"otam_ce", "video_text_ce"}


def test_no_projections_handed_in_means_the_identity_under_the_checkpoint_names(backbone):
    head = CNN_OTAM_CLIPFSAR(**hand_parts(backbone))
    assert isinstance(head.frame_proj, torch.nn.Identity) and isinstance(head.text_proj, torch.nn.Identity)
    assert head.model_dim == 64
    names = [n for n in head.state_dict() if not n.startswith("backbone.")]
    assert names == ["text_logit_scale"] + [f"temporal.0.{k}" for k in head.temporal[0].state_dict()]


def test_checkpoints_are_read_through_the_head(backbone):
    head = CNN_OTAM_CLIPFSAR(**hand_parts(backbone))
    state = head.state_dict()
    # ours: under "model" (what the trainer writes) or a bare state dict, as stored
    assert head.state_from_checkpoint({"model": state, "iteration": 3}, "last.pth") is state
    assert head.state_from_checkpoint(state, "weights.pth") is state
    assert FewShotHead.state_from_checkpoint(head, {"model": state}, "x") is state  # the base: no other format
    # CLIP-FSAR's own format goes to its converter (models/heads/clipfsar_checkpoint.py), which refuses this
    # head's 2 attention heads (the lineage has 8); tests/test_clipfsar_checkpoint.py loads one whole
    lineage = {"head.context2.layers.0.0.norm.weight": state["temporal.0.norm.weight"]}
    with pytest.raises(CheckpointError, match=r"x\.pyth: CLIP-FSAR's temporal transformer has 8 heads"):
        head.state_from_checkpoint({"model_state": lineage}, "x.pyth")


def test_mcdp_refuses_amcap_without_its_token_grid_or_a_shared_text_cache(backbone):
    cache = ClassTextCache()
    amcap = AMCAP(backbone.embed_dim, backbone.text_width, grid=2, num_coalitions=4, text_cache=cache)
    with pytest.raises(ValueError, match="dense token grid"):
        MCDP_FSAR(amcap=amcap, **hand_parts(backbone, class_text=ClassTextSource("a photo of {}", cache)))
    with pytest.raises(ValueError, match="share one class-text cache"):
        MCDP_FSAR(amcap=amcap, **hand_parts(backbone, frame_encoder=FrameEncoder("global", keep_tokens=True)))
    head = MCDP_FSAR(amcap=amcap, **hand_parts(backbone, frame_encoder=FrameEncoder("global", keep_tokens=True),
                                               class_text=ClassTextSource("a photo of {}", cache)))
    assert head.text_cache is head.amcap.text_cache


def recipes() -> dict[str, set[str]]:
    """Each module registering a head -> the models.heads modules it imports."""
    found = {}
    for path in sorted(HEADS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if "HEAD_REGISTRY.register" not in ast.unparse(tree):
            continue
        found[path.stem] = {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree)
                            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("models.heads.")}
    return found


def test_recipes_are_siblings_that_import_no_other_recipe():
    found = recipes()
    assert {"clipfsar", "mcdp"} <= set(found)
    assert {name: sorted(imports & set(found)) for name, imports in found.items() if imports & set(found)} == {}
