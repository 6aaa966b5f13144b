"""Models: CLIP backbone wrapper, OTAM, VFAM, AMCAP and the few-shot heads; importing the heads registers them in
HEAD_REGISTRY (models/build.py), from which `build_model` picks VIDEO.HEAD.NAME."""
from models import amcap, clip, heads, otam, vfam  # noqa: F401
from models.build import HEAD_REGISTRY, build_model  # noqa: F401
