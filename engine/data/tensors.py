"""Batches held in memory, behind the trainer's loader interface: for tests, benchmarks and synthetic runs."""

from __future__ import annotations


class TensorLoader:
    """Batches held in memory, behind the trainer's loader interface (iteration that ends with the
    epoch, ``len``, and a resumable position): for tests, benchmarks and synthetic runs."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches, self.pos = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        while self.pos < len(self.batches):
            self.pos += 1
            yield self.batches[self.pos - 1]
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]
