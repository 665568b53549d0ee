"""What a provider calls its machine: the hardware serial when the OS gives one, else a
Moonflower-specific hash of the machine id (systemd's app-specific id), else a name from its
signing key. Stable, never the raw machine id, and never put into the attestation statement's
serial, which a device attestation must match."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from moonflower import wire
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import SoftwareSigner, key_fingerprint
from moonflower.provider import hardware
from moonflower.provider.hardware import (
    MACHINE_APP_ID,
    app_specific_machine_id,
    detect_hardware,
    machine_serial,
)
from moonflower.provider.identity import ProviderIdentity

MACHINE_ID = "51df0b4bc3b04c9780e299b98ca373b8"


def test_the_machine_id_is_hashed_as_systemd_hashes_it() -> None:
    # systemd's own test vector (src/test/test-id128.c):
    # `systemd-id128 -a f03daaeb1c334b43a732172944bf772e show 51df0b4bc3b04c9780e299b98ca373b8`
    assert app_specific_machine_id(MACHINE_ID, "f03daaeb1c334b43a732172944bf772e") == (
        "1dee5954e75c4d6fb96cc6c04ca18a86"
    )


@pytest.mark.parametrize(
    "text", ["", "uninitialized\n", "0" * 32 + "\n", "xyz", MACHINE_ID[:-1], MACHINE_ID + "00"]
)
def test_what_is_not_a_machine_id_gives_no_serial(text: str) -> None:
    assert app_specific_machine_id(text) is None


def test_the_machine_id_file_is_read_as_written() -> None:
    assert app_specific_machine_id(MACHINE_ID.upper() + "\n") == app_specific_machine_id(MACHINE_ID)


@pytest.fixture
def no_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No DMI, device tree or machine id: `tmp_path` holds the files a test writes."""
    missing = tmp_path / "missing"
    monkeypatch.setattr(hardware, "_DMI_PRODUCT_SERIAL", missing)
    monkeypatch.setattr(hardware, "_DEVICE_TREE_SERIAL", missing)
    monkeypatch.setattr(hardware, "_MACHINE_ID_FILES", (tmp_path / "etc", tmp_path / "dbus"))
    return tmp_path


def test_a_hardware_serial_comes_first(no_sources: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (no_sources / "etc").write_text(MACHINE_ID + "\n")
    (no_sources / "serial-number").write_bytes(b"10000000a3b4c5d6\x00")
    monkeypatch.setattr(hardware, "_DEVICE_TREE_SERIAL", no_sources / "serial-number")
    assert machine_serial(system="Linux") == "10000000a3b4c5d6"
    (no_sources / "product_serial").write_text("7XK2LM3\n")
    monkeypatch.setattr(hardware, "_DMI_PRODUCT_SERIAL", no_sources / "product_serial")
    assert machine_serial(system="Linux") == "7XK2LM3"


def test_without_one_the_machine_id_names_the_machine_without_revealing_it(
    no_sources: Path,
) -> None:
    (no_sources / "dbus").write_text(MACHINE_ID + "\n")  # D-Bus's copy, when /etc has none
    serial = machine_serial(system="Linux")
    assert serial == f"mid-{app_specific_machine_id(MACHINE_ID, MACHINE_APP_ID)}"
    assert MACHINE_ID not in serial
    (no_sources / "etc").write_text("uninitialized\n")  # first boot: not an id yet
    assert machine_serial(system="Linux") == serial


def test_without_a_machine_id_the_signing_key_names_the_provider(no_sources: Path) -> None:
    key = SoftwareSigner.generate().public_key()
    expected = f"key-{key_fingerprint(key)[:32]}"
    assert machine_serial(signing_key=key, system="Linux") == expected
    assert machine_serial(signing_key=key, system="Windows") == expected
    assert machine_serial(system="Linux") is None
    assert machine_serial(signing_key=b"not a key", system="Linux") is None


@pytest.mark.skipif(platform.system() != "Linux", reason="a Linux machine id")
@pytest.mark.skipif(shutil.which("systemd-id128") is None, reason="needs systemd-id128")
def test_this_machine_is_named_as_systemd_names_it_for_moonflower() -> None:
    if hardware.serial_number() is not None:
        pytest.skip("this machine reports a hardware serial")
    shown = subprocess.run(
        ["systemd-id128", "machine-id", f"--app-specific={MACHINE_APP_ID}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if shown.returncode != 0:
        pytest.skip(f"no machine id here: {shown.stderr.strip()}")
    found = detect_hardware(signing_key=SoftwareSigner.generate().public_key())
    assert found.serial == f"mid-{shown.stdout.strip()}"
    assert detect_hardware().serial == found.serial  # every provider on this machine


def test_every_machine_gets_a_serial_that_crosses_the_wire() -> None:
    key = SoftwareSigner.generate().public_key()
    found = detect_hardware(signing_key=key)
    assert found.serial
    assert wire.Hardware.model_validate_json(found.model_dump_json()) == found
    assert detect_hardware(signing_key=key).serial == found.serial


def test_hardware_from_an_older_provider_still_parses() -> None:
    older = {"cpu": "c", "cpu_cores": 1, "memory_bytes": 0, "os": "o", "chip": None}
    assert wire.Hardware.model_validate(older).serial is None
    with pytest.raises(ValidationError):
        wire.Hardware.model_validate({**older, "serial": "S\r\nx-injected: 1"})
    with pytest.raises(ValidationError):
        wire.Hardware.model_validate({**older, "serial": "S" * 257})


async def test_the_statement_serial_stays_the_hardware_serial() -> None:
    """A stand-in serial is a name, not a hardware identity: the signed statement, whose
    serial a device attestation must match, carries only what the OS reports."""
    signer = SoftwareSigner.generate()
    described = detect_hardware(signing_key=signer.public_key())
    identity = ProviderIdentity(signer, EncryptionKeyPair.generate(), (), described)
    statement = json.loads((await identity.statement()).json_text)
    assert statement["hardware"]["serial"] == hardware.serial_number()
    assert statement["hardware"]["chip"] == described.chip
    if hardware.serial_number() is None:
        assert described.serial is not None
        assert described.serial.startswith(("mid-", "key-"))
