"""Name -> class registries (fvcore's), failing loudly with the registered names."""
from __future__ import annotations

from typing import Any

from fvcore.common.registry import Registry as _FvcoreRegistry


class Registry(_FvcoreRegistry):
    """fvcore Registry whose lookup error lists every registered name."""

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            known = ", ".join(sorted(self._obj_map)) or "(none)"
            raise KeyError(f"unknown {self._name.lower()} '{name}'; registered: {known}")
        return self._obj_map[name]
