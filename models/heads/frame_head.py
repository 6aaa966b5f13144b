"""What the lineage's CNN heads share (CLIP-FSAR's `CNN_FSHead`, models/base/few_shot.py): a frame backbone whose
per-frame features are the head's only input, no class text, and the lineage's `.pyth` parameter names.

The backbone is a torchvision ResNet (models/resnet.py, the lineage's) or a CLIP tower's global image embedding
(models/backbones.py). `encode_videos` treats every video on its own, so eval-mode features may be cached per video.

The lineage's checkpoints (its utils/checkpoint.py: {"model_state": state dict, ...}) hold its `BaseVideoModel`,
whose backbone is an Identity and whose `head` is the few-shot head: `head.backbone.{i}.*` is the ResNet Sequential
(our `backbone.{i}.*`, the same names); a head maps the names of its own modules (`lineage_renames`: TRX stacks its
tuple list, HyRSM renames its layers, CrossTransformer drops its second name of one projection); `module.` (DDP)
prefixes are stripped.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from models.heads.base import FewShotHead, VideoFeatures
from utils.checkpoint import CheckpointError, describe_key_diff
from utils.episode import Episode


def _strip_prefix(state: Mapping) -> dict[str, Any]:
    """Keys relative to the head: the "module." (DDP) and "head." (BaseVideoModel) prefixes every key shares."""
    keys, prefix = [str(k) for k in state], ""
    for part in ("module.", "head."):
        if keys and all(k.startswith(prefix + part) for k in keys):
            prefix += part
    return {str(k)[len(prefix):]: v for k, v in state.items()}


class FrameFeatureHead(FewShotHead):
    """Base of the heads whose input is per-frame features [B, T, D] of a frame backbone."""

    supports_feature_cache = True  # every video is encoded on its own
    may_leave_parameters_unused = False  # each head checks this with a backward pass (tests/test_head_contract.py)

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    @property
    def feature_dim(self) -> int:
        """D of the per-frame features (512 for ResNet-18/34, 2048 for ResNet-50, CLIP's embedding width)."""
        return int(self.backbone.embed_dim)

    def encode_videos(self, videos: Tensor, boxes: Tensor | None = None,
                      box_mask: Tensor | None = None) -> dict[str, Tensor]:
        """videos [B,T,3,H,W] -> {"frames": [B,T,D]} per-frame features (the lineage's `get_feats`)."""
        num_videos, num_frames = videos.shape[:2]
        images = self.backbone.normalise(videos).flatten(0, 1)  # [B*T, 3, H, W]
        frames = self.backbone.encode_frames(images)["global"]  # [B*T, D]
        return {"frames": frames.reshape(num_videos, num_frames, -1)}

    def episode_frames(self, episode: Episode,
                       features: tuple[VideoFeatures, VideoFeatures] | None) -> tuple[Tensor, Tensor]:
        """(support [S,T,D], query [Q,T,D]) frame features of the episode, encoded or from the feature cache."""
        support, query = features if features is not None else self.encode_episode(episode)
        return support.encoded["frames"], query.encoded["frames"]

    def clear_text_cache(self) -> None:
        """No class text."""

    # ------------------------------------------------------------------ the lineage's checkpoints
    def lineage_renames(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The lineage's head state (keys relative to the head) -> ours; the names are the same unless a head says
        otherwise."""
        return state

    def state_from_checkpoint(self, checkpoint: Mapping, source: str) -> Mapping[str, Tensor]:
        """Ours as stored (models/heads/base.py), or the lineage's `.pyth` (a dict with "model_state") with its names
        mapped to this head's. A `.pyth` whose keys or shapes do not fit is a CheckpointError with the diff in our
        names."""
        if not isinstance(checkpoint.get("model_state"), Mapping):
            return super().state_from_checkpoint(checkpoint, source)
        state = self.lineage_renames(_strip_prefix(checkpoint["model_state"]))
        own = self.state_dict()
        shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
        diff = describe_key_diff(set(own), set(state), shapes)
        if diff:
            name = type(self).__name__
            raise CheckpointError(f"{source}: the lineage's checkpoint does not fit this {name} ({diff}; names are "
                                  f"ours, see models/heads/frame_head.py) (build it as the lineage's {name}: the same "
                                  f"VIDEO.HEAD.BACKBONE_NAME, DATA.NUM_INPUT_FRAMES and head keys)")
        return state
