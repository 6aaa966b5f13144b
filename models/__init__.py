"""Models: CLIP backbone wrapper, OTAM, few-shot heads, MCDP modules.

Importing registers every component's config keys and registry names (plain imports, failures are loud). Order
does not matter: each module imports the registries it uses from models.build itself.
"""
from models import amcap, build, clip, heads, otam  # noqa: F401
from models.build import BACKBONE_REGISTRY, HEAD_REGISTRY, build_model  # noqa: F401
