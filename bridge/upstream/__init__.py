"""Upstream servers: other Ollama and OpenAI-compatible servers that serve models for bridge.

config         [[upstream]] tables -> UpstreamConfig
catalog        names and routes: which upstreams serve which model, under which name
balancer       least outstanding requests, ejection and return of failing upstreams
client         Upstreams: models, discovery, health checks, chat/generate/embed/show/running
calls          one request to a model's replicas: retries before the first byte, httpx errors
aiohttp_transport  the httpx transport bridge sends with (aiohttp's faster client underneath)
ollama_codec   domain <-> Ollama /api/* bodies        (pure)
openai_codec   domain <-> OpenAI /v1/* bodies         (pure)
framing        NDJSON lines and SSE events from a byte stream
streams        reply bodies -> Chunks, errors in-band
"""

from bridge.domain import Embeddings
from bridge.upstream.catalog import Replica, Route
from bridge.upstream.client import RemoteRunner, Upstreams, UpstreamState
from bridge.upstream.config import (
    ModelMapping,
    UpstreamConfig,
    UpstreamConfigError,
    parse_upstreams,
)

__all__ = [
    "Embeddings",
    "ModelMapping",
    "RemoteRunner",
    "Replica",
    "Route",
    "UpstreamConfig",
    "UpstreamConfigError",
    "UpstreamState",
    "Upstreams",
    "parse_upstreams",
]
