"""Per-video feature cache: encode each video once and reuse it across episodes (exact).

Valid when a video's encoding does not depend on the episode: deterministic views (all val/test episodes, or
training with DATA.DETERMINISTIC_TRAIN) and an encoder without trainable parameters in the graph (eval mode, or
a frozen backbone). The data loader is told which videos are cached and does not decode them; their slots in the
episode hold None.

The cache talks to the head only through its contract (models/heads/base.py): `supports_feature_cache`,
`encode_videos`, `per_video_outputs` and `forward(episode, features)`; what the head returns stays opaque to it.
In eval mode it also keeps the head's per-video outputs by role: as a query (computed from the video's frames
alone) and as a support (from its own, support, class), so no query label is read.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from models.heads.base import FewShotHead, VideoFeatures
from utils.episode import Episode


class VideoFeatureCache:
    """Bounded LRU map video id -> entry of one video: {"features": its `head.encode_videos` outputs, and in eval
    mode "support" / "query": its `head.per_video_outputs` in that role}, each a {name: tensor} dict."""

    def __init__(self, capacity: int, key: str = "TEST.CACHE_SIZE", storage: str = "cpu"):
        """`storage`: "cpu" keeps the features in host memory (moved to the model's device per episode, so a
        large cache, e.g. AMCAP's dense token grids, does not take accelerator memory); "model" keeps them where
        they were computed."""
        if capacity < 1:
            raise ValueError(f"{key} must be >= 1, got {capacity}")
        if storage not in ("cpu", "model"):
            raise ValueError(f"{key.rsplit('.', 1)[0]}.CACHE_DEVICE must be 'cpu' or 'model', got '{storage}'")
        self.capacity, self.key = capacity, key
        self.storage = torch.device("cpu") if storage == "cpu" else None
        self.store: OrderedDict[str, dict[str, dict[str, torch.Tensor]]] = OrderedDict()
        self.hits = self.misses = 0

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.store

    def __len__(self) -> int:
        return len(self.store)

    def episode_features(self, head: FewShotHead, episode: Episode) -> tuple[VideoFeatures, VideoFeatures]:
        """(support, query) features for an episode whose cached videos were not decoded.

        New videos of the episode are encoded together in one backbone call.
        """
        support_ids, target_ids = list(episode.support_ids), list(episode.target_ids)
        ids = support_ids + target_ids
        if len(ids) > self.capacity:
            raise ValueError(f"{self.key} ({self.capacity}) is smaller than one episode ({len(ids)} videos)")
        for vid in ids:  # the episode's own videos are the last to be evicted
            if vid in self.store:
                self.store.move_to_end(vid)
        clips, boxes, masks = _episode_slots(episode)
        new = [i for i, vid in enumerate(ids) if vid not in self.store]
        self.hits += len(ids) - len(new)
        self.misses += len(new)
        if new:
            self._encode(head, [ids[i] for i in new], [clips[i] for i in new],
                         [boxes[i] for i in new] if boxes else None, [masks[i] for i in new] if masks else None)
        if not head.training:
            names = episode.class_names
            self._add_role_outputs(head, "query", target_ids, None)
            self._add_role_outputs(head, "support", support_ids,
                                   [names[label] for label in episode.support_labels.tolist()])
        device = _device_of(head)
        return self._role_features(support_ids, "support", device), self._role_features(target_ids, "query", device)

    def _add_role_outputs(self, head: FewShotHead, role: str, ids: list[str], class_names: list[str] | None) -> None:
        """Compute `head.per_video_outputs` for the videos first seen in this role (one batched call)."""
        new = [i for i, vid in enumerate(ids) if role not in self.store[vid]]
        if not new:
            return
        device = _device_of(head)
        feats = _stack([self.store[ids[i]]["features"] for i in new], device)
        names = None if class_names is None else [class_names[i] for i in new]
        outputs = head.per_video_outputs(feats, names)
        for j, i in enumerate(new):
            self.store[ids[i]][role] = {k: self._keep(v[j]) for k, v in outputs.items()}

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        """One video's tensor as stored: its own memory (not a view of the batch), on the storage device."""
        return tensor.to(self.storage or tensor.device, copy=True)

    def stats(self) -> dict[str, int]:
        """Cached videos, hits/misses of the encoder, and videos holding per-video outputs for each role."""
        with_role = {role: sum(bool(e.get(role)) for e in self.store.values()) for role in ("support", "query")}
        return {"videos": len(self), "hits": self.hits, "misses": self.misses,
                "support_outputs": with_role["support"], "query_outputs": with_role["query"]}

    def _role_features(self, ids: list[str], role: str, device: torch.device) -> VideoFeatures:
        """The videos' features (+ this role's per-video outputs, when every video has them) stacked on dim 0."""
        entries = [self.store[vid] for vid in ids]
        features = VideoFeatures(_stack([e["features"] for e in entries], device))
        role_keys = set(entries[0].get(role, {}))
        if role_keys and all(set(e.get(role, {})) == role_keys for e in entries):
            features.cached = _stack([e[role] for e in entries], device)
        return features

    def _encode(self, head: FewShotHead, ids: list[str], clips: list, boxes: list | None, masks: list | None) -> None:
        missing = [vid for vid, clip in zip(ids, clips, strict=True) if clip is None]
        if missing:
            raise RuntimeError(f"feature cache: videos {missing[:3]} were neither decoded nor cached")
        kwargs = {}
        if boxes is not None:
            kwargs = {"boxes": torch.stack(boxes), "box_mask": torch.stack(masks)}
        with torch.no_grad():
            feats = head.encode_videos(torch.stack(clips), **kwargs)
        for j, vid in enumerate(ids):
            self.store[vid] = {"features": {k: self._keep(v[j]) for k, v in feats.items()}}
        while len(self.store) > self.capacity:
            self.store.popitem(last=False)


def _episode_slots(episode: Episode) -> tuple[list, list, list]:
    """Per-video frames (None where cached), boxes and masks, support videos first."""
    clips = list(episode.support_set) + list(episode.target_set)
    if not episode.has_tracks:
        return clips, [], []
    boxes = list(episode.support_boxes) + list(episode.target_boxes)
    masks = list(episode.support_box_mask) + list(episode.target_box_mask)
    return clips, boxes, masks


def _stack(per_video: list[dict[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    """[{name: tensor}] of single videos -> {name: [V, ...]} on `device`."""
    return {k: torch.stack([d[k] for d in per_video]).to(device, non_blocking=device.type == "cuda")
            for k in per_video[0]}


def _device_of(head: torch.nn.Module) -> torch.device:
    return next(head.parameters()).device

