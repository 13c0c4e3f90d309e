"""What the machine has: physical cores (read once; cheap), and how GPUs are described (the
engine, which alone imports llama.cpp, finds them)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

_GIB = 1024**3


@dataclass(frozen=True, slots=True)
class GPU:
    """A device llama.cpp can offload layers to, with its memory as the driver reports it."""

    name: str
    description: str
    free: int
    total: int


def context_tier(gpus: Sequence[GPU]) -> int:
    """Ollama's default num_ctx when OLLAMA_CONTEXT_LENGTH is unset: by total VRAM."""
    vram = sum(g.total for g in gpus)
    if vram >= 47 * _GIB:
        return 262144
    if vram >= 23 * _GIB:
        return 32768
    return 4096


@functools.cache
def physical_cores() -> int:
    """Physical cores (not hyper-threads): llama.cpp decodes fastest with one thread per core."""
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.perflevel0.physicalcpu"], capture_output=True, text=True
            )
            if out.returncode != 0:
                out = subprocess.run(
                    ["sysctl", "-n", "hw.physicalcpu"], capture_output=True, text=True
                )
            return max(1, int(out.stdout.strip()))
        except (OSError, ValueError):
            pass
    try:
        cores: set[tuple[str, str]] = set()
        phys = core = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and (phys or core):
                    cores.add((phys, core))
                    phys = core = ""
        if phys or core:
            cores.add((phys, core))
        if cores:
            available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
            return max(1, min(len(cores), available or len(cores)))
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)
