"""AMCAP: Shapley-interaction regions and dynamic multi-modal context prompts (docs/design.md §6)."""
from models.amcap.amcap import AMCAP, VideoTokens, add_amcap_config
from models.amcap.prompts import ClassText, PromptGenerator, build_class_text, encode_prompts
from models.amcap.regions import Regions, partition_cells
from models.amcap.shapley import (
    cosine_game_interactions,
    enumerate_coalitions,
    grid_adjacent_pairs,
    interactions_from_game,
    sample_coalitions,
    shapley_interactions,
)

__all__ = [
    "AMCAP", "ClassText", "PromptGenerator", "Regions", "add_amcap_config", "build_class_text",
    "cosine_game_interactions", "encode_prompts", "enumerate_coalitions", "grid_adjacent_pairs",
    "interactions_from_game", "partition_cells", "sample_coalitions", "shapley_interactions", "VideoTokens",
]
