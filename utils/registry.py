"""Name -> class registries (fvcore's), failing loudly with the registered names."""
from __future__ import annotations

from typing import Any

from fvcore.common.registry import Registry as _FvcoreRegistry

from utils.config import ConfigError


class UnknownNameError(ConfigError, KeyError):
    """A config names a head, dataset, ... that is not registered (config family; still a KeyError)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(_FvcoreRegistry):
    """fvcore Registry whose lookup error lists every registered name."""

    def get(self, name: str, key: str = "") -> Any:
        """The object registered as `name`; `key` (the config key that named it) prefixes the error."""
        if name not in self._obj_map:
            known = ", ".join(sorted(self._obj_map)) or "(none)"
            where = f"{key}: " if key else ""
            raise UnknownNameError(f"{where}unknown {self._name.lower()} '{name}'; registered: {known}")
        return self._obj_map[name]
