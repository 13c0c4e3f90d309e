"""The progress records pull, push and create streams are made of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Progress:
    """One line of a progress stream: Ollama's `api.ProgressResponse`."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0

    def as_json(self) -> dict[str, Any]:
        """`{"status", "digest"?, "total"?, "completed"?}`, empty fields left out (Go omitempty)."""
        out: dict[str, Any] = {"status": self.status}
        if self.digest:
            out["digest"] = self.digest
        if self.total:
            out["total"] = self.total
        if self.completed:
            out["completed"] = self.completed
        return out
