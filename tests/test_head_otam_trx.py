"""The lineage's CNN heads CNN_OTAM and CNN_TRX on torchvision ResNets: a replica of the lineage's modules under its
parameter names, written here from its equations (CLIP-FSAR models/base/few_shot.py), saved as its `.pyth`, loads
into our heads and gives the replica's logits and loss (1 and 5 shots, train and eval); query labels never reach
the logits; cached evaluation equals uncached."""
import math
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from tiny_run import TINY_CFG, assert_cached_evaluation_equals_uncached, tiny_argv, tiny_opts
from torch import nn

from models import build_model
from runs.config import load_config
from runs.test_net_few_shot import load_weights_for_test
from utils.checkpoint import CheckpointError
from utils.episode import build_episode

FRAMES, SIZE, WAY, QUERIES, OUT_DIM = 4, 16, 3, 2, 24
RESNET = ["VIDEO.HEAD.BACKBONE_NAME", "resnet18", "VIDEO.HEAD.PRETRAINED", "", "DATA.MEAN", "[0.45, 0.45, 0.45]",
          "DATA.STD", "[0.225, 0.225, 0.225]"]


def head_config(name: str, *extra: str):
    return load_config(TINY_CFG, ["VIDEO.HEAD.NAME", name, *RESNET, "DATA.NUM_INPUT_FRAMES", str(FRAMES),
                                  "DATA.TRAIN_CROP_SIZE", str(SIZE), "DATA.TEST_CROP_SIZE", str(SIZE),
                                  "TRAIN.WAY", str(WAY), *extra])


def episode(shot: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(WAY * shot, FRAMES, 3, SIZE, SIZE, generator=g)
    query = torch.randn(WAY * QUERIES, FRAMES, 3, SIZE, SIZE, generator=g)
    return build_episode(support, query, shot=shot, query=QUERIES, class_ids=[4, 0, 2],
                         split_class_names=[f"c{i}" for i in range(5)],
                         support_ids=[f"s{i}" for i in range(WAY * shot)],
                         target_ids=[f"q{i}" for i in range(WAY * QUERIES)], episode_index=0, split="train")


# ------------------------------------------------------------------ the lineage's modules, under its names
def lineage_cos_sim(x, y, epsilon=0.01):
    return (x @ y.transpose(-1, -2)) / (x.norm(dim=-1)[..., None] @ y.norm(dim=-1)[..., None].transpose(-1, -2)
                                        + epsilon)


def lineage_otam_cum_dist(dists, lbda=0.1):
    """OTAM_cum_dist: [Q, S, Lq, Ls], cell by cell (zero columns padded on both sides)."""
    dists = F.pad(dists, (1, 1))
    cum = torch.zeros_like(dists)
    for m in range(1, dists.shape[3]):
        cum[:, :, 0, m] = dists[:, :, 0, m] + cum[:, :, 0, m - 1]

    def softmin(*cells):
        return -lbda * torch.log(sum(torch.exp(-c / lbda) for c in cells))

    for ll in range(1, dists.shape[2]):
        cum[:, :, ll, 1] = dists[:, :, ll, 1] + softmin(cum[:, :, ll - 1, 0], cum[:, :, ll - 1, 1], cum[:, :, ll, 0])
        for m in range(2, dists.shape[3] - 1):
            cum[:, :, ll, m] = dists[:, :, ll, m] + softmin(cum[:, :, ll - 1, m - 1], cum[:, :, ll, m - 1])
        cum[:, :, ll, -1] = dists[:, :, ll, -1] + softmin(cum[:, :, ll - 1, -2], cum[:, :, ll - 1, -1],
                                                          cum[:, :, ll, -2])
    return cum[:, :, -1, -1]


class LineagePositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout, max_len, pe_scale_factor=0.1):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term) * pe_scale_factor
        pe[:, 1::2] = torch.cos(position * div_term) * pe_scale_factor
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x):
        return self.dropout(x + self.pe[:, :x.size(1)])


class LineageTemporalCrossTransformer(nn.Module):
    def __init__(self, in_dim, out_dim, frames, temporal_set_size, dropout=0.1):
        super().__init__()
        self.out_dim = out_dim
        self.pe = LineagePositionalEncoding(in_dim, dropout, max_len=int(frames * 1.5))
        self.k_linear = nn.Linear(in_dim * temporal_set_size, out_dim)
        self.v_linear = nn.Linear(in_dim * temporal_set_size, out_dim)
        self.norm_k = nn.LayerNorm(out_dim)
        self.norm_v = nn.LayerNorm(out_dim)
        self.class_softmax = nn.Softmax(dim=1)
        self.tuples = nn.ParameterList([nn.Parameter(torch.tensor(c), requires_grad=False)
                                        for c in combinations(range(frames), temporal_set_size)])

    def forward(self, support_set, support_labels, queries, way):
        n_queries, n_support, n_tuples = queries.shape[0], support_set.shape[0], len(self.tuples)
        support_set, queries = self.pe(support_set), self.pe(queries)
        s = torch.stack([torch.index_select(support_set, -2, p).reshape(n_support, -1) for p in self.tuples], -2)
        q = torch.stack([torch.index_select(queries, -2, p).reshape(n_queries, -1) for p in self.tuples], -2)
        support_ks, queries_ks = self.norm_k(self.k_linear(s)), self.norm_k(self.k_linear(q))
        support_vs, queries_vs = self.v_linear(s), self.v_linear(q)
        logits = torch.zeros(n_queries, way)
        for c in torch.unique(support_labels):
            idx = torch.nonzero(support_labels == c).reshape(-1)
            class_k, class_v = support_ks[idx], support_vs[idx]
            scores = torch.matmul(queries_ks.unsqueeze(1), class_k.transpose(-2, -1)) / math.sqrt(self.out_dim)
            scores = scores.permute(0, 2, 1, 3).reshape(n_queries, n_tuples, -1)
            scores = torch.cat([self.class_softmax(scores[i]) for i in range(n_queries)])
            scores = scores.reshape(n_queries, n_tuples, -1, n_tuples).permute(0, 2, 1, 3)
            prototype = torch.matmul(scores, class_v).sum(dim=1)
            distance = torch.norm(queries_vs - prototype, dim=[-2, -1]) ** 2 / n_tuples
            logits[:, c.long()] = -distance
        return logits


class LineageHead(nn.Module):
    """CNN_OTAM (no transformers) or CNN_TRX: CNN_FSHead's backbone, get_feats and forward."""

    def __init__(self, name, cardinalities=()):
        super().__init__()
        self.name = name
        self.backbone = nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-1])
        if name == "CNN_TRX":
            self.transformers = nn.ModuleList([LineageTemporalCrossTransformer(512, OUT_DIM, FRAMES, s)
                                               for s in cardinalities])

    def forward(self, support_images, support_labels, target_images, way):
        support = self.backbone(support_images).squeeze().reshape(-1, FRAMES, 512)
        target = self.backbone(target_images).squeeze().reshape(-1, FRAMES, 512)
        if self.name == "CNN_TRX":
            return torch.stack([t(support, support_labels, target, way) for t in self.transformers], -1).mean(-1)
        n_queries, n_support = target.shape[0], support.shape[0]
        dists = 1 - lineage_cos_sim(target.reshape(-1, 512), support.reshape(-1, 512))
        dists = dists.reshape(n_queries, FRAMES, n_support, FRAMES).permute(0, 2, 1, 3)  # tb sb ts ss
        cum = lineage_otam_cum_dist(dists) + lineage_otam_cum_dist(dists.transpose(-1, -2))
        class_dists = torch.stack([cum[:, support_labels == c].mean(dim=1) for c in torch.unique(support_labels)])
        return -class_dists.t()


class LineageModel(nn.Module):  # BaseVideoModel: an Identity backbone and the head
    def __init__(self, name, cardinalities=()):
        super().__init__()
        self.backbone = nn.Identity()
        self.head = LineageHead(name, cardinalities)


def lineage_pyth(tmp_path, model: LineageModel):
    """The lineage's checkpoint file (utils/checkpoint.py save_checkpoint's dict), with trained-looking weights."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "checkpoint_epoch_00001.pyth"
    torch.save({"epoch": 1, "model_state": model.state_dict(), "optimizer_state": {}, "cfg": "{}"}, path)
    return str(path)


HEADS = [("CNN_OTAM", ()), ("CNN_TRX", (2, 3))]


@pytest.mark.parametrize("name, cardinalities", HEADS, ids=[h[0] for h in HEADS])
def test_lineage_checkpoint_loads_and_gives_the_lineage_logits_and_loss(tmp_path, name, cardinalities):
    torch.manual_seed(0)
    lineage = LineageModel(name, cardinalities)
    path = lineage_pyth(tmp_path, lineage)
    extra = ["TRX.OUT_DIM", str(OUT_DIM)] if name == "CNN_TRX" else []
    head = build_model(head_config(name, *extra))
    for ours, theirs in zip(getattr(head, "transformers", []), getattr(lineage.head, "transformers", []),
                            strict=True):
        # the tables the checkpoint overwrites: ours are built as the lineage builds its own
        torch.testing.assert_close(ours.pe.pe, LineagePositionalEncoding(512, 0.1, int(FRAMES * 1.5)).pe)
        assert torch.equal(ours.tuples, torch.stack(list(theirs.tuples)))
    load_weights_for_test(head, path)
    for shot in (1, 5):
        ep = episode(shot)
        flat = (ep.support_set.flatten(0, 1), ep.support_labels, ep.target_set.flatten(0, 1), WAY)
        for train in (False, True):
            head.train(train), lineage.train(train)
            torch.manual_seed(7)  # the same dropout draws, in the lineage's order (supports, then queries)
            ours = head(ep)
            torch.manual_seed(7)
            theirs = lineage.head(*flat)
            torch.testing.assert_close(ours["logits"], theirs, rtol=1e-4, atol=1e-4)
            if train:
                loss = F.cross_entropy(theirs, ep.target_labels)
                torch.testing.assert_close(ours["loss"], loss, rtol=1e-4, atol=1e-5)
                assert list(ours["losses"]) == ["otam_ce" if name == "CNN_OTAM" else "trx_ce"]
    # train-mode BatchNorm statistics moved alike (supports and queries in two passes, as the lineage encodes them)
    torch.testing.assert_close(head.backbone[1].running_mean, lineage.head.backbone[1].running_mean)


def test_a_lineage_checkpoint_that_does_not_fit_is_a_key_diff_in_our_names(tmp_path):
    torch.manual_seed(0)
    path = lineage_pyth(tmp_path, LineageModel("CNN_TRX", (2,)))  # the lineage's pairs only: our triples are absent
    head = build_model(head_config("CNN_TRX", "TRX.OUT_DIM", str(OUT_DIM)))
    with pytest.raises(CheckpointError, match=r"checkpoint_epoch_00001.pyth: the lineage's checkpoint does not fit "
                                              r"this CNN_TRX \(\d+ missing: transformers\.1\.k_linear\.bias"):
        load_weights_for_test(head, path)


@pytest.mark.parametrize("name", ["CNN_OTAM", "CNN_TRX"])
def test_query_labels_and_support_order_do_not_change_the_logits(name):
    """Queries permuted with their labels replaced by zeros give the permuted logits; supports permuted with their
    labels give the same logits (train mode too, without TRX's dropout, whose masks follow positions)."""
    head = build_model(head_config(name, "TRX.OUT_DIM", str(OUT_DIM), "TRX.DROPOUT", "0.0"))
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


def test_cached_evaluation_equals_uncached(synthetic_root, tmp_path):
    """On a ResNet (eval BatchNorm: each video encoded on its own); tests/test_head_contract.py checks both heads'
    cached features on a CLIP tower."""
    opts = tiny_opts(synthetic_root, tmp_path, "VIDEO.HEAD.NAME", "CNN_TRX", *RESNET, "TRX.OUT_DIM", str(OUT_DIM),
                     "DATA.TEST_CROP_SIZE", str(SIZE), "DATA.TRAIN_CROP_SIZE", str(SIZE))
    assert_cached_evaluation_equals_uncached(opts)


def test_a_trx_key_under_cnn_otam_is_refused_naming_the_head_that_reads_it():
    from runs.run import check_head_sections
    from utils.config import ConfigError

    check_head_sections(head_config("CNN_TRX", "TRX.OUT_DIM", "64"))
    with pytest.raises(ConfigError, match=r"^TRX.OUT_DIM: VIDEO.HEAD.NAME CNN_OTAM does not read TRX \(it would run "
                                          r"without them; use a head that does, CNN_TRX, or drop the keys\)"):
        check_head_sections(head_config("CNN_OTAM", "TRX.OUT_DIM", "64"))


@pytest.mark.slow
def test_cnn_otam_test_accuracy_identical_for_world_size_1_and_2(synthetic_root, tmp_path):
    """Test-only runs of one CNN_OTAM checkpoint on a ResNet (eval BatchNorm): 7 episodes, uneven over 2 ranks, give
    the same per-episode results (tests/test_engine.py checks the CLIP-FSAR head alike)."""
    from runs.run import main

    opts = ("VIDEO.HEAD.NAME", "CNN_OTAM", *RESNET, "DATA.TEST_CROP_SIZE", str(SIZE), "DATA.TRAIN_CROP_SIZE", str(SIZE))
    torch.manual_seed(0)
    head = build_model(load_config(TINY_CFG, tiny_opts(synthetic_root, tmp_path / "unused", *opts)))
    ckpt = tmp_path / "otam.pth"
    torch.save({"model": head.state_dict()}, ckpt)
    common = (*opts, "TRAIN.ENABLE", "False", "TEST.CHECKPOINT_FILE_PATH", str(ckpt), "TRAIN.NUM_TEST_TASKS", "7")
    one = main(tiny_argv(synthetic_root, tmp_path / "one", *common))
    two = main(tiny_argv(synthetic_root, tmp_path / "two", *common, "NUM_GPUS", "2"))
    assert two["episodes"] == 7 and two["episode_accuracies"] == one["episode_accuracies"]
    assert two["accuracy"] == one["accuracy"] and two["ci95"] == one["ci95"]
