"""Typed application keys: the app's shared state, never module globals."""

from __future__ import annotations

from aiohttp import web

from bridge.config import Settings
from bridge.service import Service

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", Service)
