"""Settings precedence and the documented config file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from bridge.config import SETTINGS, ConfigError, load_settings, render_config_file

ROOT = Path(__file__).resolve().parent.parent


def test_config_file_documents_every_setting() -> None:
    text = (ROOT / "config" / "bridge.toml").read_text()
    assert text == render_config_file(), "regenerate config/bridge.toml from bridge.config"
    for s in SETTINGS:
        assert f"# {s.name} = " in text


def test_defaults() -> None:
    s = load_settings({}, environ={})
    assert s.address.host == "127.0.0.1" and s.address.port == 11434
    assert s.keep_alive == 300.0
    assert (s.num_parallel, s.max_loaded_models, s.max_queue) == (1, 0, 512)
    assert s.demo_model == "auto"


def test_precedence_flags_env_file_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        'keep_alive = "1h"\nnum_parallel = 3\nmax_queue = 7\n[aliases]\n"gpt" = "llama3"\n'
    )
    env = {"BRIDGE_CONFIG": str(cfg), "OLLAMA_NUM_PARALLEL": "2", "OLLAMA_MAX_QUEUE": "9"}
    s = load_settings({"max_queue": "11"}, environ=env)
    assert s.max_queue == 11  # flag over environment and file
    assert s.num_parallel == 2  # environment over file
    assert s.keep_alive == 3600.0  # file over default
    assert s.max_loaded_models == 0  # default
    assert s.aliases == {"gpt": "llama3"}


def test_ollama_environment_meanings() -> None:
    env = {
        "OLLAMA_HOST": '"0.0.0.0:8080"',
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_ORIGINS": "http://a.example, https://b.example",
        "OLLAMA_DEBUG": "1",
        "BRIDGE_GGUF_DIRS": os.pathsep.join(["/a", "/b"]),
    }
    s = load_settings({}, environ=env)
    assert (s.address.host, s.address.port) == ("0.0.0.0", 8080)
    assert math.isinf(s.keep_alive)
    assert s.origins == ("http://a.example", "https://b.example")
    assert s.log_level == "debug"
    assert s.gguf_dirs == ("/a", "/b")
    assert load_settings({}, environ={"OLLAMA_KEEP_ALIVE": "600"}).keep_alive == 600.0


def test_bad_values_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OLLAMA_NUM_PARALLEL"):
        load_settings({}, environ={"OLLAMA_NUM_PARALLEL": "many"})
    cfg = tmp_path / "bad.toml"
    cfg.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({}, environ={}, config_path=str(cfg))
    with pytest.raises(ConfigError, match="not found"):
        load_settings({}, environ={}, config_path=str(tmp_path / "missing.toml"))
