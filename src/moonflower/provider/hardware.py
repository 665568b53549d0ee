"""What machine the provider runs on, as the OS reports it.

Owns `detect_hardware()`, which reads cheap local sources only (/proc, `sysctl`, psutil,
`platform`) and never fails: anything it cannot learn falls back to a plain default. It also
owns the identity facts for the attestation statement: `machine_model()`, `serial_number()`
(None whenever the OS will not say, e.g. DMI serials are root-only on Linux, and for vendor
placeholders such as "To Be Filled By O.E.M.") and `os_version()`; these never raise either.
It must not probe slowly (no `system_profiler`, no GPU libraries) and must not send anything
anywhere.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psutil

from moonflower.wire import Hardware

_CPUINFO = Path("/proc/cpuinfo")
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
_SYSCTL_TIMEOUT_S = 2.0
_DMI_PRODUCT_NAME = Path("/sys/devices/virtual/dmi/id/product_name")
_DMI_PRODUCT_SERIAL = Path("/sys/class/dmi/id/product_serial")
_DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
_IOREG = "/usr/sbin/ioreg"
_IOREG_TIMEOUT_S = 3.0
# Values firmware vendors leave in DMI fields they never filled in.
_PLACEHOLDERS = frozenset(
    {
        "to be filled by o.e.m.",
        "system product name",
        "system serial number",
        "default string",
        "not specified",
        "not applicable",
        "n/a",
        "none",
        "unknown",
        "invalid",
        "o.e.m.",
        "oem",
        "0123456789",
        "123456789",
    }
)


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


def machine_model(*, system: str | None = None) -> str | None:
    """The machine's model identifier: `Mac15,8` on macOS (`hw.model`), the DMI product name
    on Linux (or the device-tree model on boards without DMI), else None. Never raises."""
    system = platform.system() if system is None else system
    if system == "Darwin":
        return _sysctl("hw.model")
    if system != "Linux":
        return None
    return identifier_value(_read_text(_DMI_PRODUCT_NAME)) or identifier_value(
        _read_text(_DEVICE_TREE_MODEL)
    )


def serial_number(*, system: str | None = None) -> str | None:
    """The hardware serial as the OS reports it, or None (Linux exposes the DMI serial to root
    only; an unprivileged provider reports None rather than guessing). Never raises."""
    system = platform.system() if system is None else system
    if system == "Darwin":
        return serial_from_ioreg(_ioreg_platform_expert() or "")
    if system == "Linux":
        return identifier_value(_read_text(_DMI_PRODUCT_SERIAL))
    return None


def os_version(*, system: str | None = None) -> str:
    """`macOS 14.5 (23F79)`; `Debian GNU/Linux 12 (bookworm), kernel 6.1.0-18-amd64`; or
    `<system> <release>` elsewhere. Never raises."""
    system = platform.system() if system is None else system
    if system == "Darwin":
        return describe_macos(platform.mac_ver()[0], _sysctl("kern.osversion"))
    if system == "Linux":
        try:
            os_release: Mapping[str, str] = platform.freedesktop_os_release()
        except OSError:
            os_release = {}
        return describe_linux(os_release, platform.release())
    return " ".join(part for part in (system, platform.release()) if part) or "unknown"


def identifier_value(text: str | None) -> str | None:
    """A DMI / device-tree string cleaned of padding, or None when empty or a placeholder."""
    if text is None:
        return None
    value = text.replace("\0", "").strip()
    if not value or value.lower() in _PLACEHOLDERS or not value.strip("0 -.xX"):
        return None
    return value


def serial_from_ioreg(text: str) -> str | None:
    """`IOPlatformSerialNumber` from `ioreg -rd1 -c IOPlatformExpertDevice` output."""
    match = re.search(r'"IOPlatformSerialNumber"\s*=\s*"([^"]*)"', text)
    return identifier_value(match.group(1)) if match else None


def describe_macos(version: str, build: str | None) -> str:
    """`macOS <ProductVersion> (<build>)`, the version alone when the build is unknown."""
    described = f"macOS {version or 'unknown'}"
    return f"{described} ({build})" if build else described


def describe_linux(os_release: Mapping[str, str], kernel: str) -> str:
    """The distribution (os-release PRETTY_NAME, or NAME VERSION_ID) and the kernel release."""
    distribution = os_release.get("PRETTY_NAME") or " ".join(
        part for part in (os_release.get("NAME"), os_release.get("VERSION_ID")) if part
    )
    described = distribution or "Linux"
    return f"{described}, kernel {kernel}" if kernel else described


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (OSError, ValueError):
        return None


def _ioreg_platform_expert() -> str | None:
    try:
        result = subprocess.run(
            [_IOREG, "-rd1", "-c", "IOPlatformExpertDevice"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_IOREG_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return result.stdout if result.returncode == 0 else None
