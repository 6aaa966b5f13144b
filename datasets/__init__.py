"""Few-shot video data: split lists, episodic datasets, video decoding, transforms, tracks, synthetic data."""
from datasets import build, few_shot, synthetic  # noqa: F401  (register config hooks and dataset entries)
from datasets.build import DATASET_REGISTRY, build_dataset, build_loader

__all__ = ["DATASET_REGISTRY", "build_dataset", "build_loader"]
