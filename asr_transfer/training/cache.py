"""Frozen-prefix feature cache: boundary features per (utterance, augmentation variant), memory-bounded, disk spill.

While the CNN (and any lower transformer layers) are frozen, their output for an utterance never changes within a
stage, so it is computed once and reused every epoch. Entries live in RAM up to ``max_mem_bytes``; beyond that they
are written as ``.npy`` files under the spill folder and read back on demand. The cache is cleared whenever the stage
(and so the boundary or the prefix weights) changes. Values are stored in their compute dtype (fp32 by default), so a
cached step equals an uncached one up to floating-point summation order.
"""
from __future__ import annotations

import hashlib
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch


class FeatureCache:
    """``key -> (frames, dim)`` tensor store with an LRU memory budget and a disk spill folder."""

    def __init__(self, spill_dir: str | Path, max_mem_bytes: int = 2 << 30):
        self.spill_dir = Path(spill_dir)
        self.max_mem_bytes = int(max_mem_bytes)
        self._mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._mem_bytes = 0
        self._disk: set[str] = set()
        self.hits = self.misses = self.spilled = 0

    def _file(self, key: str) -> Path:
        return self.spill_dir / (hashlib.sha1(key.encode()).hexdigest() + ".npy")

    def get(self, key: str) -> torch.Tensor | None:
        t = self._mem.get(key)
        if t is not None:
            self._mem.move_to_end(key)
            self.hits += 1
            return t
        if key in self._disk:
            self.hits += 1
            return torch.from_numpy(np.load(self._file(key)))
        self.misses += 1
        return None

    def put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu").contiguous()
        size = value.numel() * value.element_size()
        self._mem[key] = value
        self._mem_bytes += size
        while self._mem_bytes > self.max_mem_bytes and len(self._mem) > 1:
            old_key, old = self._mem.popitem(last=False)
            self._mem_bytes -= old.numel() * old.element_size()
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            np.save(self._file(old_key), old.numpy())
            self._disk.add(old_key)
            self.spilled += 1

    def clear(self) -> None:
        self._mem.clear()
        self._mem_bytes = 0
        self._disk.clear()
        if self.spill_dir.exists():
            shutil.rmtree(self.spill_dir, ignore_errors=True)

    @property
    def mem_bytes(self) -> int:
        return self._mem_bytes

    def stats(self) -> dict:
        return {"entries_mem": len(self._mem), "entries_disk": len(self._disk), "mem_mb": self._mem_bytes / 2**20,
                "hits": self.hits, "misses": self.misses, "spilled": self.spilled}
