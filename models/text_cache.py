"""One cache of class-text encodings, shared by a head's class-text source and AMCAP (one policy, one place).

Class texts depend on the class name and the text tower only. While the tower is frozen they are encoded once per
(kind, name) in full precision, whatever autocast context the first call ran in, instead of every episode; a
trainable tower bypasses the cache (its gradient must flow). Loading weights may change the tower: the head
clears the cache after every `load_state_dict`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Encoder = Callable[[list[str]], dict[str, Tensor]]  # names -> {field: [N, ...]} (one row per name)


class ClassTextCache:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Tensor]] = {}  # (kind, class name) -> {field: one row}

    def __len__(self) -> int:
        return len(self.rows)

    def kinds(self) -> set[str]:
        """The kinds of text held (e.g. the head's "prompt" features, AMCAP's "amcap" prompts)."""
        return {kind for kind, _ in self.rows}

    def clear(self) -> None:
        self.rows.clear()

    def lookup(self, backbone, kind: str, names: list[str], encode: Encoder,
               device: torch.device) -> dict[str, Tensor]:
        """{field: [len(names), ...]} on `device`, encoding only the names not cached yet (in one batch)."""
        if backbone.text_trainable:
            return encode(names)
        missing = sorted({n for n in names if (kind, n) not in self.rows})
        if missing:
            with torch.no_grad(), torch.autocast(device_type=backbone.device.type, enabled=False):
                built = encode(missing)
            for i, name in enumerate(missing):
                self.rows[kind, name] = {key: value[i] for key, value in built.items()}
        rows = [self.rows[kind, n] for n in names]
        return {key: torch.stack([row[key] for row in rows]).to(device) for key in rows[0]}
