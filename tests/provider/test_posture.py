"""The posture reports only what the OS said, never a guessed True, and never fails."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from moonflower.posture import (
    KERNEL_LOCKDOWN,
    REQUIRED_FOR_TRUST,
    SEALED_SYSTEM_VOLUME,
    SECURE_BOOT,
    SIP_ENABLED,
    is_negative,
)
from moonflower.provider.posture import (
    APPLE_SECURE_BOOT_POLICY,
    EFI_SECURE_BOOT_VARIABLE,
    combine,
    parse_authenticated_root_status,
    parse_boot_policy,
    parse_csrutil_status,
    parse_efi_secure_boot,
    parse_lockdown,
    parse_nvram_secure_boot_policy,
    read_linux_posture,
    read_macos_posture,
    read_posture,
    run_probe,
)

# --- captured command outputs -------------------------------------------------------------

CSRUTIL_ENABLED = "System Integrity Protection status: enabled.\n"
CSRUTIL_DISABLED = "System Integrity Protection status: disabled.\n"
# macOS 11 and later, after `csrutil enable --without kext` in Recovery.
CSRUTIL_CUSTOM = """System Integrity Protection status: unknown (Custom Configuration).

Configuration:
\tApple Internal: disabled
\tKext Signing: disabled
\tFilesystem Protections: enabled
\tDebugging Restrictions: enabled
\tDTrace Restrictions: enabled
\tNVRAM Protections: enabled
\tBaseSystem Verification: enabled
\tBoot-arg Restrictions: enabled
\tKernel Integrity Protections: enabled
\tAuthenticated Root Requirement: enabled

This is an unsupported configuration, likely to break in the future and leave your machine \
in an unknown state.
"""
# macOS 10.15 prints "enabled" first even when protections are off.
CSRUTIL_CUSTOM_CATALINA = """System Integrity Protection status: enabled (Custom Configuration).

Configuration:
\tApple Internal: disabled
\tKext Signing: enabled
\tFilesystem Protections: enabled
\tDebugging Restrictions: disabled
\tDTrace Restrictions: enabled
\tNVRAM Protections: enabled
\tBaseSystem Verification: enabled

This is an unsupported configuration, likely to break in the future and leave your machine \
in an unknown state.
"""
CSRUTIL_CUSTOM_NOTHING_OFF = CSRUTIL_CUSTOM.replace(
    "Kext Signing: disabled", "Kext Signing: enabled"
)

AUTHENTICATED_ROOT_ENABLED = "Authenticated Root status: enabled\n"
AUTHENTICATED_ROOT_DISABLED = "Authenticated Root status: disabled\n"

NVRAM_FULL = f"{APPLE_SECURE_BOOT_POLICY}\t%02\n"
NVRAM_MEDIUM = f"{APPLE_SECURE_BOOT_POLICY}\t%01\n"
NVRAM_NONE = f"{APPLE_SECURE_BOOT_POLICY}\t%00\n"

# `system_profiler -json SPiBridgeDataType` on an Apple silicon Mac in Full Security.
BRIDGE_JSON_FULL = """{
  "SPiBridgeDataType" : [
    {
      "ibridge_boot_uuid" : "5C1E0B7A-3D0F-4E7B-9A51-2B8E6C4D9F10",
      "ibridge_build" : "iBoot-11881.121.1",
      "ibridge_extra_boot_policies" : " ",
      "ibridge_model_identifier_top" : "Mac15,8",
      "ibridge_sb_boot_args" : "Enabled",
      "ibridge_sb_ctrr" : "Enabled",
      "ibridge_sb_device_mdm" : "No",
      "ibridge_sb_manual_mdm" : "No",
      "ibridge_sb_other_kext" : "No",
      "ibridge_sb_sip" : "Enabled",
      "ibridge_sb_ssv" : "Enabled",
      "ibridge_secure_boot" : "Full Security"
    }
  ]
}
"""
BRIDGE_JSON_REDUCED = (
    BRIDGE_JSON_FULL.replace('"Full Security"', '"Reduced Security"')
    .replace('"ibridge_sb_other_kext" : "No"', '"ibridge_sb_other_kext" : "Yes"')
    .replace('"ibridge_sb_sip" : "Enabled"', '"ibridge_sb_sip" : "Disabled"')
)
BRIDGE_JSON_LOCALIZED = BRIDGE_JSON_FULL.replace('"Full Security"', '"Sécurité maximale"').replace(
    '"Enabled"', '"Activé"'
)
# An Intel Mac without a T2 chip has no Controller section.
BRIDGE_JSON_EMPTY = '{\n  "SPiBridgeDataType" : [\n\n  ]\n}\n'
# The plain-text report of the same section.
BRIDGE_TEXT_FULL = """Controller:

      Model Identifier: Mac15,8
      Firmware Version: iBoot-11881.121.1
      Boot UUID: 5C1E0B7A-3D0F-4E7B-9A51-2B8E6C4D9F10
      Boot Policy:
        Secure Boot: Full Security
        System Integrity Protection: Enabled
        Signed System Volume: Enabled
        Kernel CTRR: Enabled
        Boot Arguments Filtering: Enabled
        Allow All Kernel Extensions: No
        User Approved Privileged MDM Operations: No
        DEP Approved Privileged MDM Operations: No

"""

SYSTEM_PROFILER = ("/usr/sbin/system_profiler", "-json", "SPiBridgeDataType")
CSRUTIL_STATUS = ("/usr/bin/csrutil", "status")
CSRUTIL_AUTHENTICATED_ROOT = ("/usr/bin/csrutil", "authenticated-root", "status")
NVRAM = ("/usr/sbin/nvram", APPLE_SECURE_BOOT_POLICY)


class FakeMac:
    """Serves captured outputs by argv; any other command 'fails' (returns None)."""

    def __init__(self, outputs: dict[tuple[str, ...], str]) -> None:
        self.outputs = outputs
        self.calls: list[tuple[tuple[str, ...], float]] = []

    def __call__(self, argv: Sequence[str], timeout_s: float) -> str | None:
        self.calls.append((tuple(argv), timeout_s))
        return self.outputs.get(tuple(argv))


APPLE_SILICON_FULL = {
    CSRUTIL_STATUS: CSRUTIL_ENABLED,
    CSRUTIL_AUTHENTICATED_ROOT: AUTHENTICATED_ROOT_ENABLED,
    SYSTEM_PROFILER: BRIDGE_JSON_FULL,
}


# --- macOS parsers ------------------------------------------------------------------------


def test_csrutil_status_is_read_literally() -> None:
    assert parse_csrutil_status(CSRUTIL_ENABLED) is True
    assert parse_csrutil_status(CSRUTIL_DISABLED) is False
    assert parse_csrutil_status("") is None
    assert parse_csrutil_status("csrutil: command not found\n") is None


def test_a_custom_sip_configuration_with_a_protection_off_is_negative() -> None:
    # The reference looked for the word "enabled" and so called these SIP-on.
    assert parse_csrutil_status(CSRUTIL_CUSTOM) is False
    assert parse_csrutil_status(CSRUTIL_CUSTOM_CATALINA) is False


def test_a_custom_configuration_with_nothing_off_is_not_vouched_for() -> None:
    assert parse_csrutil_status(CSRUTIL_CUSTOM_NOTHING_OFF) is None


def test_authenticated_root_status() -> None:
    assert parse_authenticated_root_status(AUTHENTICATED_ROOT_ENABLED) is True
    assert parse_authenticated_root_status(AUTHENTICATED_ROOT_DISABLED) is False
    assert parse_authenticated_root_status("usage: csrutil <command>\n") is None


def test_t2_secure_boot_policy_from_nvram() -> None:
    assert parse_nvram_secure_boot_policy(NVRAM_FULL) is True
    assert parse_nvram_secure_boot_policy(NVRAM_MEDIUM) is False
    assert parse_nvram_secure_boot_policy(NVRAM_NONE) is False
    assert parse_nvram_secure_boot_policy(f"{APPLE_SECURE_BOOT_POLICY}\t%07\n") is None
    assert parse_nvram_secure_boot_policy("") is None


def test_boot_policy_from_the_json_report() -> None:
    assert parse_boot_policy(BRIDGE_JSON_FULL) == {
        SECURE_BOOT: True,
        SIP_ENABLED: True,
        SEALED_SYSTEM_VOLUME: True,
    }
    assert parse_boot_policy(BRIDGE_JSON_REDUCED) == {
        SECURE_BOOT: False,
        SIP_ENABLED: False,
        SEALED_SYSTEM_VOLUME: True,
    }


def test_boot_policy_from_the_text_report() -> None:
    assert parse_boot_policy(BRIDGE_TEXT_FULL) == parse_boot_policy(BRIDGE_JSON_FULL)
    permissive = BRIDGE_TEXT_FULL.replace("Full Security", "Permissive Security")
    assert parse_boot_policy(permissive)[SECURE_BOOT] is False


def test_boot_policy_guesses_nothing_it_cannot_read() -> None:
    assert parse_boot_policy(BRIDGE_JSON_LOCALIZED) == {}
    assert parse_boot_policy(BRIDGE_JSON_EMPTY) == {}
    assert parse_boot_policy("") == {}
    assert parse_boot_policy('{"SPiBridgeDataType": "oops"}') == {}
    assert parse_boot_policy("[1, 2]") == {}


# --- macOS, all probes together -----------------------------------------------------------


def test_an_apple_silicon_mac_in_full_security() -> None:
    mac = FakeMac(APPLE_SILICON_FULL)
    posture = read_macos_posture(mac)
    assert posture == {SIP_ENABLED: True, SECURE_BOOT: True, SEALED_SYSTEM_VOLUME: True}
    assert is_negative(posture) == []


def test_probes_use_absolute_paths_and_short_timeouts() -> None:
    mac = FakeMac(APPLE_SILICON_FULL)
    read_macos_posture(mac)
    assert {argv for argv, _ in mac.calls} == {
        SYSTEM_PROFILER,
        CSRUTIL_STATUS,
        CSRUTIL_AUTHENTICATED_ROOT,
        NVRAM,
    }
    assert all(argv[0].startswith("/") for argv, _ in mac.calls)
    assert all(0 < timeout <= 10 for _, timeout in mac.calls)


def test_reduced_security_with_sip_off_is_negative() -> None:
    mac = FakeMac(
        {
            CSRUTIL_STATUS: CSRUTIL_CUSTOM,
            CSRUTIL_AUTHENTICATED_ROOT: AUTHENTICATED_ROOT_ENABLED,
            SYSTEM_PROFILER: BRIDGE_JSON_REDUCED,
        }
    )
    posture = read_macos_posture(mac)
    assert posture == {SIP_ENABLED: False, SECURE_BOOT: False, SEALED_SYSTEM_VOLUME: True}
    assert is_negative(posture) == [SECURE_BOOT, SIP_ENABLED]


def test_a_false_from_either_source_wins() -> None:
    mac = FakeMac(
        {
            CSRUTIL_STATUS: CSRUTIL_DISABLED,
            CSRUTIL_AUTHENTICATED_ROOT: AUTHENTICATED_ROOT_DISABLED,
            SYSTEM_PROFILER: BRIDGE_JSON_FULL,
        }
    )
    posture = read_macos_posture(mac)
    assert posture[SIP_ENABLED] is False
    assert posture[SEALED_SYSTEM_VOLUME] is False
    assert posture[SECURE_BOOT] is True


def test_a_t2_mac_reports_secure_boot_through_nvram() -> None:
    mac = FakeMac(
        {
            CSRUTIL_STATUS: CSRUTIL_ENABLED,
            CSRUTIL_AUTHENTICATED_ROOT: AUTHENTICATED_ROOT_ENABLED,
            SYSTEM_PROFILER: BRIDGE_JSON_EMPTY,
            NVRAM: NVRAM_MEDIUM,
        }
    )
    assert read_macos_posture(mac) == {
        SIP_ENABLED: True,
        SECURE_BOOT: False,
        SEALED_SYSTEM_VOLUME: True,
    }


def test_a_mac_that_answers_nothing_reports_unknown_not_true() -> None:
    posture = read_macos_posture(FakeMac({}))
    assert posture == {SIP_ENABLED: None, SECURE_BOOT: None, SEALED_SYSTEM_VOLUME: None}
    assert is_negative(posture) == []


def test_a_localized_mac_is_read_from_the_english_tools_only() -> None:
    mac = FakeMac(
        {
            CSRUTIL_STATUS: CSRUTIL_ENABLED,
            CSRUTIL_AUTHENTICATED_ROOT: AUTHENTICATED_ROOT_ENABLED,
            SYSTEM_PROFILER: BRIDGE_JSON_LOCALIZED,
        }
    )
    assert read_macos_posture(mac) == {
        SIP_ENABLED: True,
        SECURE_BOOT: None,
        SEALED_SYSTEM_VOLUME: True,
    }


# --- Linux --------------------------------------------------------------------------------


def make_sys(root: Path, *, secure_boot: bytes | None = None, lockdown: str | None = None) -> Path:
    efivars = root / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True)
    (efivars / "BootCurrent-8be4df61-93ca-11d0-8a5c-08002b5c4c8c").write_bytes(
        b"\x06\x00\x00\x00\x01\x00"
    )
    if secure_boot is not None:
        (efivars / EFI_SECURE_BOOT_VARIABLE).write_bytes(secure_boot)
    if lockdown is not None:
        security = root / "kernel" / "security"
        security.mkdir(parents=True)
        (security / "lockdown").write_text(lockdown)
    return root


def test_efi_secure_boot_variable_bytes() -> None:
    assert parse_efi_secure_boot(b"\x06\x00\x00\x00\x01") is True
    assert parse_efi_secure_boot(b"\x16\x00\x00\x00\x00") is False
    assert parse_efi_secure_boot(b"\x06\x00\x00\x00\x02") is None
    assert parse_efi_secure_boot(b"\x06\x00\x00\x00") is None
    assert parse_efi_secure_boot(b"") is None


def test_lockdown_modes() -> None:
    assert parse_lockdown("[none] integrity confidentiality\n") is False
    assert parse_lockdown("none [integrity] confidentiality\n") is True
    assert parse_lockdown("none integrity [confidentiality]\n") is True
    assert parse_lockdown("none integrity confidentiality\n") is None
    assert parse_lockdown("[bogus]\n") is None


def test_a_linux_machine_with_secure_boot_and_lockdown(tmp_path: Path) -> None:
    root = make_sys(
        tmp_path, secure_boot=b"\x06\x00\x00\x00\x01", lockdown="none [integrity] confidentiality\n"
    )
    posture = read_linux_posture(root)
    assert posture == {SECURE_BOOT: True, KERNEL_LOCKDOWN: True}
    assert is_negative(posture) == []


def test_a_linux_machine_with_secure_boot_off(tmp_path: Path) -> None:
    root = make_sys(
        tmp_path, secure_boot=b"\x06\x00\x00\x00\x00", lockdown="[none] integrity confidentiality\n"
    )
    posture = read_linux_posture(root)
    assert posture == {SECURE_BOOT: False, KERNEL_LOCKDOWN: False}
    assert is_negative(posture) == [SECURE_BOOT]


def test_efi_firmware_without_secure_boot_says_off(tmp_path: Path) -> None:
    assert read_linux_posture(make_sys(tmp_path))[SECURE_BOOT] is False


def test_no_efi_or_no_efivarfs_cannot_tell(tmp_path: Path) -> None:
    assert read_linux_posture(tmp_path) == {SECURE_BOOT: None, KERNEL_LOCKDOWN: None}
    unmounted = tmp_path / "unmounted"
    (unmounted / "firmware" / "efi" / "efivars").mkdir(parents=True)
    assert read_linux_posture(unmounted)[SECURE_BOOT] is None


def test_an_unreadable_variable_cannot_tell(tmp_path: Path) -> None:
    root = make_sys(tmp_path)
    (root / "firmware" / "efi" / "efivars" / EFI_SECURE_BOOT_VARIABLE).mkdir()
    (root / "kernel" / "security" / "lockdown").mkdir(parents=True)
    assert read_linux_posture(root) == {SECURE_BOOT: None, KERNEL_LOCKDOWN: None}


# --- this machine, dispatch, probes -------------------------------------------------------


def test_this_machine_reports_its_own_keys_without_failing() -> None:
    posture = read_posture()
    if sys.platform == "linux":
        assert set(posture) == {SECURE_BOOT, KERNEL_LOCKDOWN}
    elif sys.platform == "darwin":
        assert set(posture) == {SIP_ENABLED, SECURE_BOOT, SEALED_SYSTEM_VOLUME}
    assert all(value in (True, False, None) for value in posture.values())


def test_an_unknown_os_reports_nothing() -> None:
    assert read_posture(system="Plan9") == {}


@pytest.mark.skipif(sys.platform == "darwin", reason="the macOS tools exist here")
def test_macos_probes_on_a_machine_without_the_tools_report_unknown() -> None:
    assert read_posture(system="Darwin") == {
        SIP_ENABLED: None,
        SECURE_BOOT: None,
        SEALED_SYSTEM_VOLUME: None,
    }


def test_run_probe_returns_stdout_only_for_success() -> None:
    assert run_probe([sys.executable, "-c", "print('ok')"], 10) == "ok\n"
    assert run_probe([sys.executable, "-c", "import sys; sys.exit(1)"], 10) is None
    assert run_probe(["/nonexistent/tool"], 1) is None
    assert run_probe([], 1) is None


def test_run_probe_gives_up_at_its_timeout() -> None:
    started = time.monotonic()
    assert run_probe([sys.executable, "-c", "import time; time.sleep(30)"], 0.5) is None
    assert time.monotonic() - started < 10


# --- policy -------------------------------------------------------------------------------


def test_only_required_keys_that_are_explicitly_false_are_negative() -> None:
    assert {SIP_ENABLED, SECURE_BOOT, SEALED_SYSTEM_VOLUME} == REQUIRED_FOR_TRUST
    posture: dict[str, bool | None] = {
        SIP_ENABLED: False,
        SECURE_BOOT: None,
        SEALED_SYSTEM_VOLUME: True,
        KERNEL_LOCKDOWN: False,
    }
    assert is_negative(posture) == [SIP_ENABLED]
    assert is_negative(posture, required={KERNEL_LOCKDOWN, SIP_ENABLED}) == [
        KERNEL_LOCKDOWN,
        SIP_ENABLED,
    ]
    assert is_negative({}) == []


def test_combine_lets_false_win() -> None:
    assert combine(True, False) is False
    assert combine(None, False) is False
    assert combine(None, True) is True
    assert combine(None, None) is None
    assert combine() is None
