"""Registries: unknown names fail loudly with the registered names."""
import pytest

from datasets.build import DATASET_REGISTRY
from models.build import HEAD_REGISTRY, build_model
from runs.config import load_config
from utils.registry import Registry


def test_unknown_name_lists_registered_names():
    reg = Registry("HEAD")

    @reg.register()
    class Alpha:  # noqa: B903
        pass

    assert reg.get("Alpha") is Alpha
    with pytest.raises(KeyError, match=r"unknown head 'Beta'; registered: Alpha"):
        reg.get("Beta")


def test_project_registries_hold_their_components():
    assert "CNN_OTAM_CLIPFSAR" in HEAD_REGISTRY
    assert "Ssv2_few_shot" in DATASET_REGISTRY


def test_unknown_head_name_in_config_lists_heads():
    cfg = load_config(None, ["VIDEO.HEAD.NAME", "NoSuchHead"])
    with pytest.raises(KeyError, match=r"^VIDEO\.HEAD\.NAME: unknown head 'NoSuchHead'; registered: .*CNN_OTAM"):
        build_model(cfg)
