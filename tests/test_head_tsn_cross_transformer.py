"""The lineage's CNN_TSN and CNN_CrossTransformer on a torchvision ResNet: a replica of its modules under its parameter
names, written here from CLIP-FSAR's models/base/few_shot.py, saved as its `.pyth`, loads into our heads and gives
the replica's logits and loss (1 and 5 shots, train and eval); query labels never reach the logits; cached evaluation
equals uncached."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_head_otam_trx import FRAMES, RESNET, SIZE, WAY, episode, head_config, lineage_pyth
from tiny_run import assert_cached_evaluation_equals_uncached, tiny_opts
from torch import nn

from models import build_model
from models.heads.base import VideoFeatures
from runs.test_net_few_shot import load_weights_for_test
from utils.checkpoint import CheckpointError

DIM, HIDDEN = 512, 16  # ResNet-18's width (the lineage's CrossTransformer hard-codes 2048: resnet50 only)


def lineage_cos_sim(x, y, epsilon=0.01):
    return (x @ y.transpose(-1, -2)) / (x.norm(dim=-1)[..., None] @ y.norm(dim=-1)[..., None].transpose(-1, -2)
                                        + epsilon)


class LineageHead(nn.Module):
    """CNN_TSN or CNN_CrossTransformer: CNN_FSHead's backbone and get_feats, the class's forward."""

    def __init__(self, name, norm_sq_dist=False):
        super().__init__()
        self.name, self.norm_sq_dist = name, norm_sq_dist
        self.backbone = nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-1])
        if name == "CNN_CrossTransformer":
            self.key_head = nn.Conv1d(DIM, HIDDEN, 1, bias=False)
            self.query_head = self.key_head
            self.value_head = nn.Conv1d(DIM, HIDDEN, 1, bias=False)

    def forward(self, support_images, support_labels, target_images, way, shot):
        support = self.backbone(support_images).squeeze().reshape(-1, FRAMES, DIM)
        target = self.backbone(target_images).squeeze().reshape(-1, FRAMES, DIM)
        return self.logits(support, support_labels, target, way, shot)

    def logits(self, support, support_labels, target, way, shot):
        """The class's forward after get_feats."""
        classes = torch.unique(support_labels)
        if self.name == "CNN_TSN":
            support, target = support.mean(1), target.mean(1)
            if self.norm_sq_dist:
                prototypes = torch.stack([support[support_labels == c].mean(0) for c in classes])
                return -torch.stack([(target - prototypes[c]).norm(dim=-1) ** 2 for c in classes]).t()
            sim = lineage_cos_sim(target, support)
            return torch.stack([sim[:, support_labels == c].mean(1) for c in classes]).t()
        support = torch.cat([support[support_labels == c] for c in classes])
        query = self.query_head(target.permute(0, 2, 1))  # [Q, h, T]
        key = self.key_head(support.permute(0, 2, 1)).view(way, shot, HIDDEN, -1)
        value = self.value_head(support.permute(0, 2, 1)).view(way, shot, HIDDEN, -1)
        key = key.permute(0, 2, 3, 1).contiguous().view(way, HIDDEN, -1)
        value = value.permute(0, 2, 3, 1).contiguous().view(way, HIDDEN, -1)
        attn = torch.einsum("bdp,ndv->bnpv", query, key) * HIDDEN ** -0.5
        attn = F.softmax(attn, dim=-1)
        value = value.unsqueeze(0).expand(attn.shape[0], -1, -1, -1)
        prototype = torch.einsum("bnpv,bndv->bnpd", attn, value)  # [Q, WAY, T, h]
        query_value = self.value_head(target.permute(0, 2, 1)).permute(0, 2, 1)  # [Q, T, h]
        logits = []
        for c in range(prototype.shape[1]):
            s = F.normalize(prototype[:, c], dim=2).reshape(prototype.shape[0], -1)
            t = F.normalize(query_value, dim=2).reshape(query_value.shape[0], -1)
            logits.append((t * s).sum(1) / 8)
        return torch.stack(logits, dim=1)


class LineageModel(nn.Module):  # BaseVideoModel: an Identity backbone and the head
    def __init__(self, name, norm_sq_dist=False):
        super().__init__()
        self.backbone = nn.Identity()
        self.head = LineageHead(name, norm_sq_dist)


CASES = [("CNN_TSN", ()), ("CNN_TSN", ("TSN.DISTANCE", "squared_euclidean")),
         ("CNN_CrossTransformer", ("CROSS_TRANSFORMER.HIDDEN_DIM", str(HIDDEN)))]


@pytest.mark.parametrize("name, keys", CASES, ids=["tsn", "tsn_norm_sq", "cross_transformer"])
def test_lineage_checkpoint_loads_and_gives_the_lineage_logits_and_loss(tmp_path, name, keys):
    torch.manual_seed(0)
    lineage = LineageModel(name, norm_sq_dist="squared_euclidean" in keys)
    path = lineage_pyth(tmp_path, lineage)
    head = build_model(head_config(name, *keys))
    load_weights_for_test(head, path)
    for shot in (1, 5):
        ep = episode(shot)
        flat = (ep.support_set.flatten(0, 1), ep.support_labels, ep.target_set.flatten(0, 1), WAY, shot)
        for train in (False, True):
            head.train(train), lineage.train(train)
            ours, theirs = head(ep), lineage.head(*flat)
            torch.testing.assert_close(ours["logits"], theirs, rtol=1e-5, atol=1e-5)
            if train:
                loss = F.cross_entropy(theirs, ep.target_labels)
                torch.testing.assert_close(ours["loss"], loss, rtol=1e-4, atol=1e-5)
                assert list(ours["losses"]) == ["tsn_ce" if name == "CNN_TSN" else "cross_transformer_ce"]
    # train-mode BatchNorm statistics moved alike (supports and queries in two passes, as the lineage encodes them)
    torch.testing.assert_close(head.backbone[1].running_mean, lineage.head.backbone[1].running_mean)


@pytest.mark.parametrize("name, keys", CASES, ids=["tsn", "tsn_norm_sq", "cross_transformer"])
def test_on_features_of_unit_scale_the_logits_are_the_lineage_formula(name, keys):
    """The backbone's features are large (their norms hide cos_sim's +0.01): features near unit norm, as the feature
    cache hands them to the head, show it."""
    torch.manual_seed(0)
    lineage = LineageModel(name, norm_sq_dist="squared_euclidean" in keys).head
    head = build_model(head_config(name, *keys))
    head.load_state_dict(head.lineage_renames(lineage.state_dict()))
    g = torch.Generator().manual_seed(3)
    for shot in (1, 5):
        ep = episode(shot)
        support = torch.rand(WAY * shot, FRAMES, DIM, generator=g) / DIM ** 0.5 * 2
        query = torch.rand(WAY * 2, FRAMES, DIM, generator=g) / DIM ** 0.5 * 2
        ours = head(ep, (VideoFeatures({"frames": support}), VideoFeatures({"frames": query})))["logits"]
        theirs = lineage.logits(support, ep.support_labels, query, WAY, shot)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_cross_transformer_logits_divide_by_the_lineage_8_whatever_the_frame_count():
    """At 4 frames the lineage's hard-coded /8 halves the mean cosine; SIMILARITY_DIVISOR 4 gives the mean."""
    torch.manual_seed(0)
    lineage = build_model(head_config("CNN_CrossTransformer", "CROSS_TRANSFORMER.HIDDEN_DIM", str(HIDDEN))).eval()
    mean = build_model(head_config("CNN_CrossTransformer", "CROSS_TRANSFORMER.HIDDEN_DIM", str(HIDDEN),
                                   "CROSS_TRANSFORMER.SIMILARITY_DIVISOR", str(FRAMES))).eval()
    mean.load_state_dict(lineage.state_dict())
    ep = episode(1)
    with torch.no_grad():
        torch.testing.assert_close(lineage(ep)["logits"] * 2, mean(ep)["logits"])
        assert mean(ep)["logits"].abs().max() <= 1 + 1e-5


def test_a_cross_transformer_checkpoint_whose_query_head_is_not_its_key_head_is_a_key_diff(tmp_path):
    torch.manual_seed(0)
    lineage = LineageModel("CNN_CrossTransformer")
    lineage.head.query_head = nn.Conv1d(DIM, HIDDEN, 1, bias=False)  # no longer the key projection
    path = lineage_pyth(tmp_path, lineage)
    head = build_model(head_config("CNN_CrossTransformer", "CROSS_TRANSFORMER.HIDDEN_DIM", str(HIDDEN)))
    with pytest.raises(CheckpointError, match=r"checkpoint_epoch_00001.pyth: the lineage's checkpoint does not fit "
                                              r"this CNN_CrossTransformer \(.*query_head\.weight"):
        load_weights_for_test(head, path)


@pytest.mark.parametrize("name", ["CNN_TSN", "CNN_CrossTransformer"])
def test_query_labels_and_support_order_do_not_change_the_logits(name):
    """Queries permuted with their labels replaced by zeros give the permuted logits; supports permuted with their
    labels give the same logits (train mode too)."""
    extra = ("CROSS_TRANSFORMER.HIDDEN_DIM", str(HIDDEN)) if name == "CNN_CrossTransformer" else ()
    head = build_model(head_config(name, *extra))
    ep = episode(2, seed=1)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled_query = ep.replace(target_set=ep.target_set[order], target_labels=torch.zeros_like(ep.target_labels),
                                real_target_labels=torch.zeros_like(ep.real_target_labels))
    shuffled_support = ep.replace(support_set=ep.support_set[order], support_labels=ep.support_labels[order])
    for train in (False, True):
        head.train(train)
        logits = head(ep)["logits"]
        torch.testing.assert_close(head(shuffled_query)["logits"], logits[order], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head(shuffled_support)["logits"], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["CNN_TSN", "CNN_CrossTransformer"])
def test_cached_evaluation_equals_uncached(synthetic_root, tmp_path, name):
    """On a ResNet (eval BatchNorm: each video encoded on its own)."""

    extra = ("CROSS_TRANSFORMER.HIDDEN_DIM", str(HIDDEN)) if name == "CNN_CrossTransformer" else ()
    opts = tiny_opts(synthetic_root, tmp_path, "VIDEO.HEAD.NAME", name, *RESNET, "DATA.TEST_CROP_SIZE", str(SIZE),
                     "DATA.TRAIN_CROP_SIZE", str(SIZE), *extra)
    assert_cached_evaluation_equals_uncached(opts)


def test_a_cross_transformer_key_under_cnn_tsn_is_refused_naming_the_head_that_reads_it():
    from runs.run import check_head_sections
    from utils.config import ConfigError

    check_head_sections(head_config("CNN_TSN", "TSN.DISTANCE", "squared_euclidean"))
    with pytest.raises(ConfigError, match=r"^CROSS_TRANSFORMER.HIDDEN_DIM: VIDEO.HEAD.NAME CNN_TSN does not read "
                                          r"CROSS_TRANSFORMER .*CNN_CrossTransformer"):
        check_head_sections(head_config("CNN_TSN", "CROSS_TRANSFORMER.HIDDEN_DIM", "64"))
