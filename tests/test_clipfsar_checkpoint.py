"""CLIP-FSAR's own checkpoints (`.pyth` with "model_state") load into our head and give its logits; what does not map,
and checkpoints of our pre-fix temporal block, fail with a key diff that says why."""
import json
import re

import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from test_head_clipfsar import FRAMES, TINY_HEAD, tiny_episode
from torch import nn

from models.clip import CLIPBackbone
from models.heads.clipfsar import CNN_OTAM_CLIPFSAR
from models.heads.clipfsar_checkpoint import _OPENAI_VISUAL, convert_lineage_state
from models.heads.mcdp import MCDP_FSAR
from runs.config import load_config
from runs.test_net_few_shot import load_weights_for_test
from utils.checkpoint import CheckpointError, load_checkpoint

DEPTH = 2


# ------------------------------------------------------------------ CLIP-FSAR's temporal transformer, by its names
class LineageAttention(nn.Module):  # Attention_qkv
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.2))

    def forward(self, q, k, v):
        b, n, d = q.shape
        q, k, v = (f(t).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for f, t in ((self.to_q, q), (self.to_k, k), (self.to_v, v)))
        attn = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, d))


class LineagePreNorm(nn.Module):  # PreNormattention_qkv
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, q, k, v):
        return self.fn(self.norm(q), self.norm(k), self.norm(v)) + q


class LineageFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.05), nn.Linear(hidden, dim),
                                 nn.Dropout(0.05))

    def forward(self, x):
        return self.net(x)


class LineageTransformer(nn.Module):  # Transformer_v1
    def __init__(self, dim: int, hidden: int, depth: int, heads: int = 8):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleList([LineagePreNorm(dim, LineageAttention(dim, heads)),
                                                    LineageFeedForward(dim, hidden)]) for _ in range(depth)])

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x, x, x)
            x = ff(x) + x
        return x


def make_head(*opts: str, seed: int = 0, depth: int = DEPTH) -> CNN_OTAM_CLIPFSAR:
    """CLIP-FSAR's model (global frame features) of the tiny backbone, with config KEY VALUE pairs `opts`."""
    torch.manual_seed(seed)
    cfg = load_config(None, [*TINY_HEAD, "VIDEO.HEAD.TRANSFORMER_MLP_DIM", "96", "TRAIN.TRANSFORMER_DEPTH", str(depth),
                             *opts])
    return CNN_OTAM_CLIPFSAR(**CNN_OTAM_CLIPFSAR.from_config(cfg)).eval()


def lineage_model_state(head: CNN_OTAM_CLIPFSAR) -> dict:
    """What CLIP-FSAR's BaseVideoModel.state_dict() holds for `head`'s weights (written here, not imported)."""
    dim, hidden = head.model_dim, head.temporal[0].ffn[0].out_features
    context2 = LineageTransformer(dim, hidden, len(head.temporal))
    with torch.no_grad():
        for layer, block in zip(context2.layers, head.temporal, strict=True):
            prenorm, ff = layer
            prenorm.norm.load_state_dict(block.norm.state_dict())
            for linear, weight in zip((prenorm.fn.to_q, prenorm.fn.to_k, prenorm.fn.to_v),
                                      block.attn.qkv.weight.split(dim), strict=True):
                linear.weight.copy_(weight)
            prenorm.fn.to_out[0].load_state_dict(block.attn.to_out.state_dict())
            ff.net[0].load_state_dict(block.ffn[0].state_dict())
            ff.net[3].load_state_dict(block.ffn[3].state_dict())
    state = {f"head.backbone.{k}": v.clone() for k, v in head.backbone.model.visual.state_dict().items()}
    state.update({f"head.context2.{k}": v.clone() for k, v in context2.state_dict().items()})
    state["head.scale"] = head.text_logit_scale.detach().reshape(1).clone()
    return state


def save_pyth(path, model_state: dict, legacy: bool = False) -> None:
    """A file shaped like CLIP-FSAR's save_checkpoint writes: epoch, model_state, Adam state, cfg as JSON text."""
    params = [v.clone().float().requires_grad_() for v in list(model_state.values())[:3]]
    optimizer = torch.optim.Adam(params, lr=5e-5)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    checkpoint = {"epoch": 3, "model_state": model_state, "optimizer_state": optimizer.state_dict(),
                  "cfg": json.dumps({"TRAIN": {"USE_CLASSIFICATION": True}})}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)


@pytest.fixture(scope="module")
def trained():
    """A head with weights away from the init (the role of a CLIP-FSAR training run)."""
    head = make_head(seed=1)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if not name.startswith("backbone.model.") or name.startswith("backbone.model.visual."):
                p.add_(0.05 * torch.randn_like(p))
        head.text_logit_scale.fill_(2.5)
    return head


@pytest.mark.parametrize("legacy", [False, True])
def test_clip_fsar_pyth_gives_the_logits_of_the_same_weights_loaded_natively(tmp_path, trained, legacy):
    path = tmp_path / "checkpoint_epoch_00010.pyth"
    save_pyth(path, lineage_model_state(trained), legacy)
    fresh = make_head(seed=1)  # same (stand-in for pretrained) text tower; image tower and head as initialised
    episode = tiny_episode()
    with torch.no_grad():
        reference = trained(episode)["logits"]
        assert not torch.allclose(fresh(episode)["logits"], reference)
        # The door TEST.CHECKPOINT_FILE_PATH goes through: weights_only=True reads CLIP-FSAR's file as it is, and
        # the head converts its names (PrototypeHead.state_from_checkpoint).
        load_weights_for_test(fresh, str(path))
        assert torch.equal(fresh(episode)["logits"], reference)


def test_mcdp_with_its_modules_off_loads_a_clip_fsar_pyth_too(tmp_path, trained):
    path = tmp_path / "checkpoint_epoch_00010.pyth"
    save_pyth(path, lineage_model_state(trained), legacy=False)
    torch.manual_seed(1)
    cfg = load_config(None, [*TINY_HEAD, "VIDEO.HEAD.TRANSFORMER_MLP_DIM", "96", "TRAIN.TRANSFORMER_DEPTH",
                             str(DEPTH), "VIDEO.HEAD.NAME", "MCDP_FSAR"])
    mcdp = MCDP_FSAR(**MCDP_FSAR.from_config(cfg)).eval()
    load_weights_for_test(mcdp, str(path))
    with torch.no_grad():
        assert torch.equal(mcdp(tiny_episode())["logits"], trained(tiny_episode())["logits"])


def test_lineage_transformer_written_here_is_our_temporal_stack(trained):
    """The test's own Transformer_v1 (the source of the names above) computes what our temporal blocks compute."""
    context2 = LineageTransformer(trained.model_dim, 96, DEPTH).eval()
    state = {k[len("head.context2."):]: v for k, v in lineage_model_state(trained).items()
             if k.startswith("head.context2.")}
    context2.load_state_dict(state)
    x = torch.randn(3, FRAMES + 1, trained.model_dim)
    with torch.no_grad():
        torch.testing.assert_close(context2(x), trained.temporal(x))


def test_bare_state_dicts_with_or_without_wrappers_are_recognised(trained):
    state = lineage_model_state(trained)
    for prefix in ("", "module."):
        bare = {prefix + k: v for k, v in state.items()}
        converted = convert_lineage_state(bare, make_head(), "bare.pth")
        assert converted is not None and set(converted) == set(trained.state_dict())
    head_only = {k[len("head."):]: v for k, v in state.items()}
    assert set(convert_lineage_state({"model_state": head_only}, make_head(), "x.pyth")) == set(trained.state_dict())


def test_our_own_checkpoints_are_not_the_lineage_format(trained):
    assert convert_lineage_state({"model": trained.state_dict(), "iteration": 4}, make_head(), "last.pth") is None
    assert convert_lineage_state(trained.state_dict(), make_head(), "weights.pth") is None


def test_a_key_that_does_not_map_is_named(trained):
    state = lineage_model_state(trained)
    state["head.context2.layers.0.0.fn.to_qkv.weight"] = torch.zeros(1)
    state["head.backbone.attn_pool.query"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"^x\.pyth: CLIP-FSAR checkpoint keys with no counterpart in our "
                                              r"CLIP-FSAR head: 2: head\.backbone\.attn_pool\.query, "
                                              r"head\.context2\.layers\.0\.0\.fn\.to_qkv\.weight"):
        convert_lineage_state({"model_state": state}, make_head(), "x.pyth")


def test_a_lineage_model_of_another_depth_gives_the_key_diff(trained):
    state = lineage_model_state(trained)
    with pytest.raises(CheckpointError, match=r"^x\.pyth: CLIP-FSAR checkpoint does not fit this model \(\d+ "
                                              r"unexpected: temporal\.1\.attn\.qkv\.weight.*TRANSFORMER_DEPTH"):
        convert_lineage_state({"model_state": state}, make_head(depth=1), "x.pyth")


def test_a_model_with_other_head_counts_is_refused(trained):
    with pytest.raises(CheckpointError, match=r"8 heads.*VIDEO\.HEAD\.TRANSFORMER_HEADS 8"):
        convert_lineage_state({"model_state": lineage_model_state(trained)},
                              make_head("VIDEO.HEAD.TRANSFORMER_HEADS", "4"), "x")


def test_trainable_parts_clip_fsar_lacks_are_missing_not_filled(trained):
    state = lineage_model_state(trained)
    with pytest.raises(CheckpointError, match=r"missing: frame_proj\.bias, frame_proj\.weight.*PROJ_DIM 0"):
        convert_lineage_state({"model_state": state}, make_head("VIDEO.HEAD.PROJ_DIM", "64"), "x.pyth")


class PreFixBlock(nn.Module):
    """Our temporal block before the fix, for its state-dict names: MultiheadAttention and a second LayerNorm."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 8, dropout=0.2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.05), nn.Linear(hidden, dim),
                                 nn.Dropout(0.05))


def test_checkpoints_of_the_pre_fix_temporal_block_say_retrain(tmp_path, trained):
    old = {k: v for k, v in trained.state_dict().items() if not k.startswith("temporal.")}
    for i in range(DEPTH):
        old.update({f"temporal.{i}.{k}": v for k, v in PreFixBlock(trained.model_dim, 96).state_dict().items()})
    path = tmp_path / "last.pth"
    torch.save({"model": old, "iteration": 8, "config": ""}, path)
    with pytest.raises(CheckpointError) as err:
        convert_lineage_state(load_checkpoint(str(path)), make_head(), str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: trained with the pre-fix temporal block")
    assert message.endswith("(retrain)")
    assert re.search(r"missing: temporal\.0\.attn\.qkv\.weight", message)
    assert re.search(r"unexpected: temporal\.0\.attn\.in_proj_bias", message)


def test_openai_image_tower_names_are_open_clips():
    """The name map covers both CLIP-FSAR image towers: OpenAI's ViT and ModifiedResNet names (open_clip's too)."""
    openai_names = ["conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "proj",
                    "transformer.resblocks.11.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_proj.bias",
                    "bn3.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.num_batches_tracked",
                    "attnpool.positional_embedding", "attnpool.c_proj.bias"]
    assert all(_OPENAI_VISUAL.fullmatch(n) for n in openai_names)
    resnet = ModifiedResNet(layers=(1, 2, 1, 1), output_dim=32, heads=2, image_size=64, width=16)
    vit = CLIPBackbone("FSAR-Tiny-ViT").model.visual
    for tower in (resnet, vit):
        assert [k for k in tower.state_dict() if not _OPENAI_VISUAL.fullmatch(k)] == []
    assert not _OPENAI_VISUAL.fullmatch("transformer.resblocks.0.ls_1.gamma")  # layer scale: not in OpenAI CLIP


def test_a_pyth_whose_scale_has_another_shape_is_a_key_diff(tmp_path, trained):
    """`head.scale` of shape [2] used to fail in a reshape with a raw RuntimeError."""
    state = lineage_model_state(trained)
    state["head.scale"] = torch.ones(2)
    path = tmp_path / "checkpoint_epoch_00010.pyth"
    save_pyth(path, state)
    with pytest.raises(CheckpointError, match=r"CLIP-FSAR checkpoint does not fit this model \(.*text_logit_scale "
                                              r"\(2,\) vs \(\)") as err:
        convert_lineage_state(load_checkpoint(str(path)), make_head(), str(path))
    assert err.value.exit_code == 7 and str(err.value).startswith(f"{path}: ")
