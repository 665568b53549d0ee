"""What machine the provider runs on, as the OS reports it.

Owns `detect_hardware()`, which reads cheap local sources only (/proc, `sysctl`, psutil,
`platform`) and never fails: anything it cannot learn falls back to a plain default. Its
`chip` names the machine on every platform (the Apple chip; elsewhere the GPU when one is
cheaply known, else the CPU) and its `serial` is `machine_serial()`.

It also owns the identity facts for the attestation statement: `machine_model()`,
`serial_number()` (the hardware serial; None whenever the OS will not say, e.g. DMI serials
are root-only on Linux, and for vendor placeholders such as "To Be Filled By O.E.M.") and
`os_version()`; these never raise either. `machine_serial()` is what a provider calls itself
when there is no hardware serial: `mid-<hex>`, a Moonflower-specific hash of the systemd/D-Bus
machine id computed like systemd's `sd_id128_get_machine_app_specific()` (stable across
restarts, the same for every provider on the machine, and revealing nothing of the machine id
itself), else `key-<hex>` from the provider's signing key fingerprint. Neither is a hardware
serial, so neither goes into the statement's `serial` (which a device attestation must match).

It must not probe slowly (no `system_profiler`, no GPU libraries) and must not send anything
anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psutil

from moonflower.crypto.signing import key_fingerprint
from moonflower.generation import MAX_LABEL_CHARS
from moonflower.wire import Hardware

_CPUINFO = Path("/proc/cpuinfo")
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
_SYSCTL_TIMEOUT_S = 2.0
_DMI_PRODUCT_NAME = Path("/sys/devices/virtual/dmi/id/product_name")
_DMI_PRODUCT_SERIAL = Path("/sys/class/dmi/id/product_serial")
_DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
_DEVICE_TREE_SERIAL = Path("/proc/device-tree/serial-number")
_MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
MACHINE_APP_ID = "72d7cb1adb8246de81587b165c26de51"
"""Moonflower's application id for app-specific machine ids: with it,
`systemd-id128 machine-id --app-specific=72d7cb1adb8246de81587b165c26de51` prints the hex
of this machine's `mid-` serial."""
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_KEY_SERIAL_HEX = 32
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


def detect_hardware(*, signing_key: bytes | None = None) -> Hardware:
    """Describe this machine: CPU, cores, chip, GPU when cheaply known, memory, OS, and its
    serial (`machine_serial`; `signing_key` is the provider's identity key, the last resort)."""
    is_macos = platform.system() == "Darwin"
    apple_chip = _sysctl("machdep.cpu.brand_string") if is_macos else None
    cpu = (
        apple_chip or _linux_cpu_model() or platform.processor() or platform.machine() or "unknown"
    )
    gpu = _macos_gpu(apple_chip) if is_macos else _nvidia_gpu()
    return Hardware(
        cpu=_label(cpu),
        cpu_cores=os.cpu_count() or 1,
        chip=_label(apple_chip or gpu or cpu),
        gpu=_label(gpu) if gpu else None,
        memory_bytes=_memory_bytes(),
        os=_label(platform.platform() or platform.system() or "unknown"),
        serial=machine_serial(signing_key=signing_key),
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
    only, boards without DMI may name theirs in the device tree; an unprivileged provider
    reports None rather than guessing). Never raises."""
    system = platform.system() if system is None else system
    if system == "Darwin":
        return serial_from_ioreg(_ioreg_platform_expert() or "")
    if system == "Linux":
        return identifier_value(_read_text(_DMI_PRODUCT_SERIAL)) or identifier_value(
            _read_text(_DEVICE_TREE_SERIAL)
        )
    return None


def machine_serial(*, signing_key: bytes | None = None, system: str | None = None) -> str | None:
    """What this provider calls its machine: the hardware serial when the OS gives one, else
    `mid-<hex>` (`app_specific_machine_id` of the machine id), else `key-<hex>` from
    `signing_key`'s fingerprint; None only when none of those exists. Never raises."""
    found = serial_number(system=system)
    if found is not None:
        return _label(found)
    for path in _MACHINE_ID_FILES:
        machine_id = app_specific_machine_id(_read_text(path) or "")
        if machine_id is not None:
            return f"mid-{machine_id}"
    return key_serial(signing_key) if signing_key is not None else None


def app_specific_machine_id(machine_id: str, app_id: str = MACHINE_APP_ID) -> str | None:
    """`machine_id` (32 hex digits, as in /etc/machine-id) hashed for `app_id` as systemd's
    `sd_id128_get_machine_app_specific()` does: HMAC-SHA256 keyed by the machine id's bytes
    over the app id's bytes, the first 16 bytes made a version-4 UUID, in 32 hex digits.
    None when `machine_id` is not one (empty, "uninitialized", all zeros)."""
    text = machine_id.strip().lower()
    if not _MACHINE_ID.match(text) or not text.strip("0"):
        return None
    digest = bytearray(
        hmac.new(bytes.fromhex(text), bytes.fromhex(app_id), hashlib.sha256).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x40  # version 4
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return digest.hex()


def key_serial(signing_key: bytes) -> str | None:
    """`key-<hex>`: the start of the signing key's fingerprint (public already), or None for
    something that is not a P-256 public point."""
    try:
        return f"key-{key_fingerprint(signing_key)[:_KEY_SERIAL_HEX]}"
    except ValueError:
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


def _label(text: str) -> str:
    """`text` as a wire label: printable and at most `MAX_LABEL_CHARS` characters, so an odd
    CPU or GPU name cannot make registration fail."""
    printable = "".join(char if char.isprintable() else " " for char in text).strip()
    return printable[:MAX_LABEL_CHARS] or "unknown"


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
