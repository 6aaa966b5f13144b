"""Per-video feature cache: encode each video once and reuse it across episodes (exact).

Valid when a video's encoding does not depend on the episode: deterministic views (all val/test episodes, or
training with DATA.DETERMINISTIC_TRAIN) and an encoder without trainable parameters in the graph (eval mode, or
a frozen backbone). The data loader is told which videos are cached and does not decode them; their slots in the
episode hold None.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

ROLES = (("support", "support_set", "support_boxes", "support_box_mask"),
         ("target", "target_set", "target_boxes", "target_box_mask"))


class VideoFeatureCache:
    """Bounded LRU map video id -> {name: tensor} of `head.encode_videos` outputs for one video."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"TEST.CACHE_SIZE must be >= 1, got {capacity}")
        self.capacity = capacity
        self.store: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.store

    def __len__(self) -> int:
        return len(self.store)

    def episode_features(self, head: torch.nn.Module, episode: dict) -> tuple[dict, dict]:
        """(support, target) feature dicts for an episode whose cached videos were not decoded.

        New videos of the episode are encoded together in one backbone call.
        """
        ids = list(episode["support_ids"]) + list(episode["target_ids"])
        if len(ids) > self.capacity:
            raise ValueError(f"TEST.CACHE_SIZE ({self.capacity}) is smaller than one episode ({len(ids)} videos)")
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
        num_support = len(episode["support_ids"])
        stacked = {k: torch.stack([self.store[vid][k] for vid in ids]) for k in self.store[ids[0]]}
        return ({k: v[:num_support] for k, v in stacked.items()}, {k: v[num_support:] for k, v in stacked.items()})

    def _encode(self, head, ids: list[str], clips: list, boxes: list | None, masks: list | None) -> None:
        missing = [vid for vid, clip in zip(ids, clips, strict=True) if clip is None]
        if missing:
            raise RuntimeError(f"feature cache: videos {missing[:3]} were neither decoded nor cached")
        kwargs = {}
        if boxes is not None:
            kwargs = {"boxes": torch.stack(boxes), "box_mask": torch.stack(masks)}
        with torch.no_grad():
            feats = head.encode_videos(torch.stack(clips), **kwargs)
        for j, vid in enumerate(ids):
            self.store[vid] = {k: v[j] for k, v in feats.items()}
        while len(self.store) > self.capacity:
            self.store.popitem(last=False)


def _episode_slots(episode: dict) -> tuple[list, list, list]:
    """Per-video frames (None where cached), boxes and masks, support videos first."""
    clips, boxes, masks = [], [], []
    for _, frames_key, boxes_key, mask_key in ROLES:
        clips.extend(list(episode[frames_key]))
        if boxes_key in episode:
            boxes.extend(list(episode[boxes_key]))
            masks.extend(list(episode[mask_key]))
    return clips, boxes, masks


def head_supports_cache(head: torch.nn.Module) -> bool:
    """Heads opt in by defining `encode_videos` + `forward_features` and `supports_feature_cache = True`."""
    return bool(getattr(head, "supports_feature_cache", False))
