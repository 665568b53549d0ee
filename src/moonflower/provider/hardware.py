"""What machine the provider runs on, as the OS reports it.

Owns `detect_hardware()`, which reads cheap local sources only (/proc, `sysctl`, psutil,
`platform`) and never fails: anything it cannot learn falls back to a plain default. It must
not probe slowly (no `system_profiler`, no GPU libraries) and must not send anything anywhere.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import psutil

from moonflower.wire import Hardware

_CPUINFO = Path("/proc/cpuinfo")
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
_SYSCTL_TIMEOUT_S = 2.0


def detect_hardware() -> Hardware:
    """Describe this machine: CPU, cores, chip (macOS), GPU when cheaply known, memory, OS."""
    is_macos = platform.system() == "Darwin"
    chip = _sysctl("machdep.cpu.brand_string") if is_macos else None
    cpu = chip or _linux_cpu_model() or platform.processor() or platform.machine() or "unknown"
    return Hardware(
        cpu=cpu,
        cpu_cores=os.cpu_count() or 1,
        chip=chip,
        gpu=_macos_gpu(chip) if is_macos else _nvidia_gpu(),
        memory_bytes=_memory_bytes(),
        os=platform.platform() or platform.system() or "unknown",
    )


def cpu_model_from_cpuinfo(text: str) -> str | None:
    """The CPU model named in /proc/cpuinfo text (x86 `model name`, or ARM's `Model` /
    `Hardware` lines), or None."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "cpu model", "model", "hardware", "processor"):
        found = fields.get(key)
        # On ARM, `processor` is a bare index and `model` can be a number; skip those.
        if found and not found.isdigit():
            return found
    return None


def gpu_model_from_nvidia_information(text: str) -> str | None:
    """The `Model:` line of /proc/driver/nvidia/gpus/*/information, or None."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Model" and value.strip():
            return value.strip()
    return None


def _linux_cpu_model() -> str | None:
    try:
        return cpu_model_from_cpuinfo(_CPUINFO.read_text(errors="replace"))
    except OSError:
        return None


def _nvidia_gpu() -> str | None:
    try:
        for info in sorted(_NVIDIA_GPUS.glob("*/information")):
            model = gpu_model_from_nvidia_information(info.read_text(errors="replace"))
            if model:
                return model
    except OSError:
        return None
    return None


def _macos_gpu(chip: str | None) -> str | None:
    # On Apple Silicon the GPU is part of the chip; naming its core count would need
    # system_profiler, which is far too slow for startup.
    if chip and chip.startswith("Apple") and platform.machine() == "arm64":
        return f"{chip} (integrated GPU)"
    return None


def _sysctl(name: str) -> str | None:
    try:
        result = subprocess.run(
            ["sysctl", "-n", name],
            capture_output=True,
            text=True,
            timeout=_SYSCTL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def _memory_bytes() -> int:
    try:
        return int(psutil.virtual_memory().total)
    except (OSError, RuntimeError, AttributeError):
        pass  # an unsupported platform: ask the OS directly below
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0
