"""The security posture this machine's OS can actually report, for the attestation statement
and every challenge answer.

Owns `read_posture()` (run the probes for this OS) and the pure parsers of each probe's
output; the keys, and which values rule out trust, are `moonflower.posture`'s. Each value is
True or False only when the OS said so in words we recognise; anything we cannot read, a tool
that is missing, fails, times out or answers in a language we do not parse, is None ("this OS
cannot tell"). A guessed True is never written. Probes never raise and each has a short
timeout; this module must not need root, must not write anything and must not send anything
anywhere.

macOS keys (all three are always present):
    sip_enabled            `csrutil status`, and the Boot Policy of `system_profiler
                           SPiBridgeDataType` (Controller section; readable without root on
                           Apple silicon and T2 Macs). `bputil -d` would say more but needs root.
    secure_boot            Boot Policy "Full Security" is True; Reduced / Medium / Permissive /
                           No Security are False. On T2 Macs also the NVRAM variable
                           `AppleSecureBootPolicy` (%02 full, %01 medium, %00 none).
    sealed_system_volume   `csrutil authenticated-root status` and Boot Policy "Signed System
                           Volume". (`diskutil info /` is not used: its `Sealed:` line describes
                           whichever APFS object `/` resolves to, and "Broken" is normal on the
                           live System volume under a sealed snapshot, so it would call an
                           honest Mac negative.)
    When two sources answer, an explicit False from either wins; otherwise a True from either.

Linux keys (both always present):
    secure_boot            the EFI variable SecureBoot-8be4df61-…: 4 attribute bytes, then 1 / 0.
                           No EFI, or efivarfs not mounted → None. EFI with efivars readable but
                           no SecureBoot variable → False (the firmware has no Secure Boot).
    kernel_lockdown        /sys/kernel/security/lockdown: `[none]` → False, `[integrity]` or
                           `[confidentiality]` → True; missing (no securityfs / no LSM) → None.

Any other OS reports an empty posture.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from moonflower.posture import (
    KERNEL_LOCKDOWN,
    SEALED_SYSTEM_VOLUME,
    SECURE_BOOT,
    SIP_ENABLED,
    Posture,
)

Runner = Callable[[Sequence[str], float], str | None]
"""Runs argv with a timeout in seconds; returns stdout when the command exited 0, else None."""

EFI_SECURE_BOOT_VARIABLE = "SecureBoot-8be4df61-93ca-11d0-8a5c-08002b5c4c8c"
APPLE_SECURE_BOOT_POLICY = "94b73556-2ba3-4f5f-aa6c-35e6a9b4c3d8:AppleSecureBootPolicy"

_PROBE_TIMEOUT_S = 3.0
_SYSTEM_PROFILER_TIMEOUT_S = 8.0  # one data type takes well under a second; allow a busy Mac

_CSRUTIL = "/usr/bin/csrutil"
_NVRAM = "/usr/sbin/nvram"
_SYSTEM_PROFILER = "/usr/sbin/system_profiler"

_FULL_SECURITY = "full security"
_WEAKER_SECURITY = frozenset(
    {"reduced security", "medium security", "permissive security", "no security"}
)
# In csrutil's custom configuration, "Apple Internal" is disabled on every customer Mac.
_SIP_NOT_A_PROTECTION = "apple internal"


def read_posture(*, system: str | None = None) -> Posture:
    """This machine's posture (see the module docstring for keys and sources). Never raises."""
    system = platform.system() if system is None else system
    if system == "Darwin":
        return read_macos_posture()
    if system == "Linux":
        return read_linux_posture()
    return {}


def read_macos_posture(run: Runner | None = None) -> Posture:
    """Run the macOS probes through `run` (the real commands by default) and combine them."""
    run = run_probe if run is None else run
    boot_policy = parse_boot_policy(
        run([_SYSTEM_PROFILER, "-json", "SPiBridgeDataType"], _SYSTEM_PROFILER_TIMEOUT_S) or ""
    )
    return {
        SIP_ENABLED: combine(
            parse_csrutil_status(run([_CSRUTIL, "status"], _PROBE_TIMEOUT_S) or ""),
            boot_policy.get(SIP_ENABLED),
        ),
        SECURE_BOOT: combine(
            boot_policy.get(SECURE_BOOT),
            parse_nvram_secure_boot_policy(
                run([_NVRAM, APPLE_SECURE_BOOT_POLICY], _PROBE_TIMEOUT_S) or ""
            ),
        ),
        SEALED_SYSTEM_VOLUME: combine(
            parse_authenticated_root_status(
                run([_CSRUTIL, "authenticated-root", "status"], _PROBE_TIMEOUT_S) or ""
            ),
            boot_policy.get(SEALED_SYSTEM_VOLUME),
        ),
    }


def read_linux_posture(sys_root: Path = Path("/sys")) -> Posture:
    """Read Secure Boot and lockdown state under `sys_root` (a copy of /sys in tests)."""
    return {
        SECURE_BOOT: _linux_secure_boot(sys_root / "firmware" / "efi"),
        KERNEL_LOCKDOWN: _linux_lockdown(sys_root / "kernel" / "security" / "lockdown"),
    }


def combine(*reports: bool | None) -> bool | None:
    """Merge answers from several sources: any False wins, then any True, else None."""
    if any(report is False for report in reports):
        return False
    if any(report is True for report in reports):
        return True
    return None


# --- pure parsers -------------------------------------------------------------------------


def parse_csrutil_status(text: str) -> bool | None:
    """`csrutil status`: enabled → True, disabled → False. A custom configuration with any
    protection turned off is False (the reference read such output as enabled)."""
    match = re.search(r"System Integrity Protection status:\s*(\w+)", text)
    if match is None:
        return None
    state = match.group(1).lower()
    is_custom = "custom configuration" in text.lower()
    if state == "disabled" or (is_custom and _custom_sip_disables_something(text)):
        return False
    if state == "enabled" and not is_custom:
        return True
    return None


def parse_authenticated_root_status(text: str) -> bool | None:
    """`csrutil authenticated-root status`: "Authenticated Root status: enabled|disabled"."""
    match = re.search(r"Authenticated Root status:\s*(\w+)", text)
    return _enabled_word(match.group(1)) if match else None


def parse_nvram_secure_boot_policy(text: str) -> bool | None:
    """`nvram 94b73556-…:AppleSecureBootPolicy` on a T2 Mac: `%02` is Full Security."""
    name, sep, value = text.strip().partition("\t")
    if not sep or not name.endswith("AppleSecureBootPolicy"):
        return None
    return {"%02": True, "%01": False, "%00": False}.get(value.strip())


def parse_boot_policy(text: str) -> Posture:
    """The Boot Policy of `system_profiler [-json] SPiBridgeDataType`, as posture keys.

    Accepts the JSON document and the plain-text report. Keys it cannot read are left out;
    values in another language than English are not guessed at."""
    fields = _boot_policy_json(text)
    if fields is None:
        fields = _boot_policy_text(text)
    posture: Posture = {}
    secure_boot = fields.get("secure_boot", "").strip().lower()
    if secure_boot == _FULL_SECURITY:
        posture[SECURE_BOOT] = True
    elif secure_boot in _WEAKER_SECURITY:
        posture[SECURE_BOOT] = False
    for field, key in (("sip", SIP_ENABLED), ("ssv", SEALED_SYSTEM_VOLUME)):
        found = _enabled_word(fields.get(field, ""))
        if found is not None:
            posture[key] = found
    return posture


def parse_efi_secure_boot(data: bytes) -> bool | None:
    """The SecureBoot EFI variable as efivarfs shows it: 4 attribute bytes, then 1 or 0."""
    if len(data) != 5:
        return None
    return {1: True, 0: False}.get(data[4])


def parse_lockdown(text: str) -> bool | None:
    """/sys/kernel/security/lockdown, e.g. `none [integrity] confidentiality`."""
    match = re.search(r"\[(\w+)\]", text)
    if match is None:
        return None
    return {"none": False, "integrity": True, "confidentiality": True}.get(match.group(1))


# --- probes -------------------------------------------------------------------------------


def run_probe(argv: Sequence[str], timeout_s: float) -> str | None:
    """Run one read-only command; its stdout when it exited 0 in time, else None."""
    if not argv:
        return None
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return result.stdout if result.returncode == 0 else None


def _linux_secure_boot(efi: Path) -> bool | None:
    efivars = efi / "efivars"
    try:
        return parse_efi_secure_boot((efivars / EFI_SECURE_BOOT_VARIABLE).read_bytes())
    except FileNotFoundError:
        pass  # no such variable, or efivarfs not mounted: tell the two apart below
    except OSError:
        return None
    try:
        is_mounted = efivars.is_dir() and any(efivars.iterdir())
    except OSError:
        return None
    return False if is_mounted else None


def _linux_lockdown(path: Path) -> bool | None:
    try:
        return parse_lockdown(path.read_text(errors="replace"))
    except OSError:
        return None


def _enabled_word(word: str) -> bool | None:
    return {"enabled": True, "disabled": False}.get(word.strip().lower())


def _custom_sip_disables_something(text: str) -> bool:
    for line in text.splitlines():
        name, sep, state = line.partition(":")
        if sep and name.strip().lower() != _SIP_NOT_A_PROTECTION and state.strip() == "disabled":
            return True
    return False


def _boot_policy_json(text: str) -> dict[str, str] | None:
    try:
        document = json.loads(text)
    except ValueError:
        return None
    entries = document.get("SPiBridgeDataType") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return None
    fields: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        for field, key in (
            ("secure_boot", "ibridge_secure_boot"),
            ("sip", "ibridge_sb_sip"),
            ("ssv", "ibridge_sb_ssv"),
        ):
            value = entry.get(key)
            if isinstance(value, str):
                fields.setdefault(field, value)
    return fields


def _boot_policy_text(text: str) -> dict[str, str]:
    labels = {
        "secure boot": "secure_boot",
        "system integrity protection": "sip",
        "signed system volume": "ssv",
    }
    fields: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        field = labels.get(label.strip().lower())
        if sep and field:
            fields.setdefault(field, value.strip())
    return fields
