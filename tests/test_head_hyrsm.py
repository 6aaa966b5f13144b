"""The lineage's HyRSM (CNN_HyRSM_1shot / CNN_HyRSM_5shot) on a torchvision ResNet: a replica of its modules under its
parameter names, written here from CLIP-FSAR's models/base/few_shot.py, saved as its `.pyth`, loads into our one
head and gives the replica's logits and loss (its training loop's USE_LOCAL loss) for 1 and 5 shots, train and eval;
query labels never reach the logits."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_head_otam_trx import FRAMES, WAY, episode, head_config, lineage_pyth
from torch import nn

from models import build_model
from runs.test_net_few_shot import load_weights_for_test

DIM, NUM_CLASS, WEIGHT = 512, 6, 0.4


class LineagePositionalEncoder(nn.Module):
    def __init__(self, d_model, max_seq_len=20, dropout=0.1, A_scale=10.0, B_scale=1.0):  # noqa: N803
        super().__init__()
        self.d_model, self.A_scale, self.B_scale = d_model, A_scale, B_scale
        self.dropout = nn.Dropout(dropout)
        pe = torch.zeros(max_seq_len, d_model)
        for pos in range(max_seq_len):
            for i in range(0, d_model, 2):
                pe[pos, i] = math.sin(pos / (10000 ** ((2 * i) / d_model)))
                pe[pos, i + 1] = math.cos(pos / (10000 ** ((2 * (i + 1)) / d_model)))
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x):
        x = x * math.sqrt(self.d_model / self.A_scale)
        return self.dropout(x + self.B_scale * self.pe[:, :x.size(1)])


class LineageAttention(nn.Module):  # Attention: fused q/k/v, no bias
    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, dim_head * heads * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim_head * heads, dim), nn.Dropout(dropout))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = (torch.einsum("bhid,bhjd->bhij", q, k) * self.scale).softmax(dim=-1)
        return self.to_out(torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(b, n, -1))


class LineagePreNormattention(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x)) + x


class LineageMultiHeadAttention(nn.Module):
    def __init__(self, n_head, d_model, d_k, d_v, dropout=0.1):
        super().__init__()
        self.n_head, self.d_k, self.d_v = n_head, d_k, d_v
        self.w_qs = nn.Linear(d_model, n_head * d_k, bias=False)
        self.w_ks = nn.Linear(d_model, n_head * d_k, bias=False)
        self.w_vs = nn.Linear(d_model, n_head * d_v, bias=False)
        self.temperature = np.power(d_k, 0.5)
        self.attn_dropout = nn.Dropout(0.1)
        self.layer_norm = nn.LayerNorm(d_model)
        self.fc = nn.Linear(n_head * d_v, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q, k, v):
        sz_b, len_q, _ = q.size()
        residual = q
        q = self.w_qs(q).view(sz_b, len_q, self.n_head, self.d_k).permute(2, 0, 1, 3).contiguous().view(-1, len_q,
                                                                                                         self.d_k)
        k = self.w_ks(k).view(sz_b, len_q, self.n_head, self.d_k).permute(2, 0, 1, 3).contiguous().view(-1, len_q,
                                                                                                         self.d_k)
        v = self.w_vs(v).view(sz_b, len_q, self.n_head, self.d_v).permute(2, 0, 1, 3).contiguous().view(-1, len_q,
                                                                                                         self.d_v)
        attn = self.attn_dropout(F.softmax(torch.bmm(q, k.transpose(1, 2)) / self.temperature, dim=2))
        output = torch.bmm(attn, v).view(self.n_head, sz_b, len_q, self.d_v)
        output = output.permute(1, 2, 0, 3).contiguous().view(sz_b, len_q, -1)
        return self.layer_norm(self.dropout(self.fc(output)) + residual)


class LineageHyRSM(nn.Module):
    def __init__(self, five_shot):
        super().__init__()
        self.five_shot = five_shot
        self.backbone = nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-1])
        self.relu = nn.ReLU(inplace=True)
        self.pe = LineagePositionalEncoder(d_model=DIM)
        self.temporal_atte_before = LineagePreNormattention(DIM, LineageAttention(DIM, 8, DIM // 8, dropout=0.2))
        self.temporal_atte = LineageMultiHeadAttention(8, DIM, DIM // 8, DIM // 8, dropout=0.05)
        self.layer2 = nn.Sequential(nn.Conv1d(DIM * 2, DIM, kernel_size=1))
        self.classification_layer = nn.Linear(DIM, NUM_CLASS)

    def forward(self, support_images, support_labels, target_images, way):
        T = FRAMES  # noqa: N806
        s = self.backbone(support_images).squeeze().reshape(-1, T, DIM)
        t = self.backbone(target_images).squeeze().reshape(-1, T, DIM)
        s = self.relu(self.temporal_atte_before(self.pe(s)))
        t = self.relu(self.temporal_atte_before(self.pe(t)))
        class_logits = self.classification_layer(torch.cat([s, t], 0)).reshape(-1, NUM_CLASS)
        unique_labels = torch.unique(support_labels)
        if self.five_shot:
            s = torch.stack([s[support_labels == c].mean(dim=0) for c in unique_labels])
        n_q = t.shape[0]
        s_ext, t_ext = s.unsqueeze(0).repeat(n_q, 1, 1, 1), t.unsqueeze(1)
        feature_in = torch.cat([s_ext.mean(2), t_ext.mean(2)], 1)
        feature_in = self.relu(self.temporal_atte(feature_in, feature_in, feature_in))
        s = torch.cat([s_ext, feature_in[:, :-1, :].unsqueeze(2).repeat(1, 1, T, 1)], 3).reshape(-1, T, DIM * 2)
        s = self.layer2(s.permute(0, 2, 1)).permute(0, 2, 1).reshape(n_q, -1, T, DIM)
        t = self.layer2(torch.cat([t, feature_in[:, -1, :].unsqueeze(1).repeat(1, T, 1)], 2).permute(0, 2, 1)
                        ).permute(0, 2, 1)
        n_support = s.shape[1]
        s = s.reshape(n_q, n_support * T, DIM)
        frame_sim = torch.matmul(F.normalize(s, dim=2), F.normalize(t, dim=2).permute(0, 2, 1))
        dists = 1 - frame_sim.reshape(n_q, n_support, T, T)
        cum_dists = dists.min(3)[0].sum(2) + dists.min(2)[0].sum(2)
        members = unique_labels if self.five_shot else support_labels
        class_dists = torch.stack([cum_dists[:, members == c].mean(dim=1) for c in unique_labels])
        return -class_dists.t(), class_logits


class LineageModel(nn.Module):
    def __init__(self, five_shot):
        super().__init__()
        self.backbone = nn.Identity()
        self.head = LineageHyRSM(five_shot)


@pytest.mark.parametrize("name", ["CNN_HyRSM_1shot", "CNN_HyRSM_5shot"])
def test_lineage_checkpoint_loads_and_gives_the_lineage_logits_and_loss(tmp_path, name):
    torch.manual_seed(0)
    lineage = LineageModel(five_shot=name.endswith("5shot"))
    path = lineage_pyth(tmp_path, lineage)
    head = build_model(head_config(name, "TRAIN.NUM_CLASS", str(NUM_CLASS), "TRAIN.USE_CLASSIFICATION_VALUE",
                                   str(WEIGHT)))
    torch.testing.assert_close(head.pe.pe, LineagePositionalEncoder(DIM).pe)  # the table the checkpoint overwrites
    load_weights_for_test(head, path)
    for shot in (1, 5):
        ep = episode(shot)
        flat = (ep.support_set.flatten(0, 1), ep.support_labels, ep.target_set.flatten(0, 1), WAY)
        for train in (False, True):
            head.train(train), lineage.train(train)
            torch.manual_seed(7)  # the same dropout draws in the same order
            ours = head(ep)
            torch.manual_seed(7)
            logits, class_logits = lineage.head(*flat)
            torch.testing.assert_close(ours["logits"], logits, rtol=1e-4, atol=1e-4)
            if train:
                real = torch.cat([ep.real_support_labels, ep.real_target_labels])
                frame_ce = F.cross_entropy(class_logits, real.unsqueeze(1).repeat(1, FRAMES).reshape(-1))
                torch.testing.assert_close(ours["losses"]["frame_class_ce"], WEIGHT * frame_ce)
                torch.testing.assert_close(ours["loss"], F.cross_entropy(logits, ep.target_labels) + WEIGHT * frame_ce,
                                           rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["CNN_HyRSM_1shot", "CNN_HyRSM_5shot"])
def test_query_labels_do_not_change_the_logits(name):
    head = build_model(head_config(name, "TRAIN.NUM_CLASS", str(NUM_CLASS))).eval()
    ep = episode(2, seed=1)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = ep.replace(target_set=ep.target_set[order], target_labels=torch.zeros_like(ep.target_labels),
                          real_target_labels=torch.zeros_like(ep.real_target_labels))
    with torch.no_grad():
        torch.testing.assert_close(head(shuffled)["logits"], head(ep)["logits"][order], rtol=1e-5, atol=1e-5)
