"""Models: CLIP backbone wrapper, OTAM, VFAM, AMCAP and the few-shot heads; importing registers their config
keys and names. `build` comes first: it defines the registries the other modules register into."""
from models import build  # noqa: F401, I001  (order matters, see above)
from models import amcap, clip, heads, otam, vfam  # noqa: F401
from models.build import BACKBONE_REGISTRY, HEAD_REGISTRY, build_model  # noqa: F401
