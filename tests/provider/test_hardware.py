"""Hardware detection reports this machine and never fails."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from moonflower.provider import hardware
from moonflower.provider.hardware import (
    cpu_model_from_cpuinfo,
    detect_hardware,
    gpu_model_from_nvidia_information,
)
from moonflower.wire import Hardware

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 85
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
CPU part\t: 0xd0c

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_this_machine_is_described() -> None:
    found = detect_hardware()
    assert isinstance(found, Hardware)
    assert found.cpu
    assert found.cpu_cores == (os.cpu_count() or 1)
    assert found.memory_bytes > 0
    assert found.os == platform.platform()
    if platform.system() == "Linux" and Path("/proc/cpuinfo").exists():
        assert found.cpu == cpu_model_from_cpuinfo(Path("/proc/cpuinfo").read_text())
        assert found.chip == (found.gpu or found.cpu)  # no Apple chip: the GPU, else the CPU
    assert found.chip


def test_it_round_trips_through_the_wire_model() -> None:
    found = detect_hardware()
    assert Hardware.model_validate(found.model_dump(mode="json")) == found


def test_x86_model_name_is_read() -> None:
    assert cpu_model_from_cpuinfo(X86_CPUINFO) == "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"


def test_arm_boards_are_named_by_model_not_by_a_number() -> None:
    assert cpu_model_from_cpuinfo(ARM_CPUINFO) == "Raspberry Pi 4 Model B Rev 1.4"
    assert cpu_model_from_cpuinfo("processor\t: 0\nmodel\t: 85\n") is None
    assert cpu_model_from_cpuinfo("") is None


def test_an_nvidia_gpu_is_named_from_proc() -> None:
    info = "Model: \t\t NVIDIA GeForce RTX 4090\nIRQ:   \t\t 140\n"
    assert gpu_model_from_nvidia_information(info) == "NVIDIA GeForce RTX 4090"
    assert gpu_model_from_nvidia_information("IRQ: 1\n") is None


def test_unreadable_sources_fall_back_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken() -> None:
        raise OSError("no /proc here")

    monkeypatch.setattr(hardware, "_CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(hardware, "_NVIDIA_GPUS", tmp_path / "missing")
    monkeypatch.setattr(hardware.psutil, "virtual_memory", broken)
    found = detect_hardware()
    assert found.cpu
    assert found.chip
    assert found.memory_bytes >= 0
    assert found.gpu is None or platform.system() == "Darwin"


def test_a_linux_machine_with_an_nvidia_gpu_is_named_by_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "0000:01:00.0").mkdir()
    (tmp_path / "0000:01:00.0" / "information").write_text("Model: \t NVIDIA L4\nIRQ: 1\n")
    monkeypatch.setattr(hardware, "_NVIDIA_GPUS", tmp_path)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    found = detect_hardware()
    assert (found.chip, found.gpu) == ("NVIDIA L4", "NVIDIA L4")


def test_unprintable_hardware_names_still_describe_the_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Odd\x1b[31mCPU\u202e " + "x" * 400 + "\n")
    monkeypatch.setattr(hardware, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    found = detect_hardware()  # a wire label would refuse the raw name
    assert found.cpu.startswith("Odd [31mCPU ")
    assert len(found.cpu) == 256 and found.cpu.isprintable()
    assert found.chip == found.cpu


# --- identity facts for the attestation statement -------------------------------------------

IOREG_PLATFORM_EXPERT = """+-o J516sAP  <class IOPlatformExpertDevice, id 0x100000219, \
registered, matched, active, busy 0 (41 ms), retain 39>
    {
      "IOPolledInterface" = "AppleARMWatchdogTimerHibernateHandler is not serializable"
      "#address-cells" = <02000000>
      "AAPL,phandle" = <01000000>
      "serial-number" = <4b37585951324c3951330000000000000000000000000000000000000000>
      "IOBusyInterest" = "IOCommand is not serializable"
      "target-type" = <"J516s">
      "platform-name" = <7436303230000000000000000000000000000000000000000000000000000000>
      "manufacturer" = <"Apple Inc.">
      "compatible" = <"J516sAP","Mac15,8","AppleARM">
      "IOPlatformSerialNumber" = "K7XYQ2L9Q3"
      "model" = <"Mac15,8">
      "IOPlatformUUID" = "3F0C6B2E-8D41-4A7C-9E15-6B2D8C0A4F71"
      "name" = <"device-tree">
    }
"""


def test_a_mac_serial_is_read_from_ioreg() -> None:
    assert hardware.serial_from_ioreg(IOREG_PLATFORM_EXPERT) == "K7XYQ2L9Q3"
    assert hardware.serial_from_ioreg('"IOPlatformSerialNumber" = ""') is None
    assert hardware.serial_from_ioreg("") is None


def test_dmi_placeholders_are_not_identities() -> None:
    assert hardware.identifier_value("PowerEdge R750\n") == "PowerEdge R750"
    assert hardware.identifier_value("Raspberry Pi 4 Model B Rev 1.4\x00") == (
        "Raspberry Pi 4 Model B Rev 1.4"
    )
    for placeholder in (
        "To Be Filled By O.E.M.\n",
        "System Serial Number\n",
        "Default string\n",
        "0\n",
        "00000000-0000\n",
        "  \n",
        None,
    ):
        assert hardware.identifier_value(placeholder) is None


def test_os_descriptions() -> None:
    assert hardware.describe_macos("14.5", "23F79") == "macOS 14.5 (23F79)"
    assert hardware.describe_macos("14.5", None) == "macOS 14.5"
    assert hardware.describe_macos("", None) == "macOS unknown"
    debian = {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "NAME": "Debian GNU/Linux"}
    assert hardware.describe_linux(debian, "6.1.0-18-amd64") == (
        "Debian GNU/Linux 12 (bookworm), kernel 6.1.0-18-amd64"
    )
    assert hardware.describe_linux({"NAME": "Alpine Linux", "VERSION_ID": "3.19.1"}, "6.6.14") == (
        "Alpine Linux 3.19.1, kernel 6.6.14"
    )
    assert hardware.describe_linux({}, "6.6.14") == "Linux, kernel 6.6.14"


def test_linux_model_and_serial_come_from_dmi(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = tmp_path / "product_name"
    serial = tmp_path / "product_serial"
    name.write_text("PowerEdge R750\n")
    serial.write_text("7XK2LM3\n")
    monkeypatch.setattr(hardware, "_DMI_PRODUCT_NAME", name)
    monkeypatch.setattr(hardware, "_DMI_PRODUCT_SERIAL", serial)
    assert hardware.machine_model(system="Linux") == "PowerEdge R750"
    assert hardware.serial_number(system="Linux") == "7XK2LM3"


def test_a_board_without_dmi_is_named_by_its_device_tree(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    monkeypatch.setattr(hardware, "_DMI_PRODUCT_NAME", tmp_path / "missing")
    monkeypatch.setattr(hardware, "_DEVICE_TREE_MODEL", model)
    assert hardware.machine_model(system="Linux") == "Raspberry Pi 5 Model B Rev 1.0"


def test_an_unreadable_serial_is_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # As a normal user product_serial is mode 0400 root; a directory stands in for any OSError.
    (tmp_path / "product_serial").mkdir()
    monkeypatch.setattr(hardware, "_DMI_PRODUCT_SERIAL", tmp_path / "product_serial")
    assert hardware.serial_number(system="Linux") is None
    monkeypatch.setattr(hardware, "_DMI_PRODUCT_SERIAL", tmp_path / "missing")
    assert hardware.serial_number(system="Linux") is None


def test_identity_facts_on_this_machine_never_fail() -> None:
    for system in (None, "Linux", "Darwin", "Windows"):
        model = hardware.machine_model(system=system)
        serial = hardware.serial_number(system=system)
        assert model is None or (isinstance(model, str) and model)
        assert serial is None or (isinstance(serial, str) and serial)
        assert hardware.os_version(system=system)
    assert hardware.machine_model(system="Windows") is None
    assert hardware.serial_number(system="Windows") is None
    assert hardware.os_version(system="Windows").startswith("Windows")
    if platform.system() == "Linux":
        assert hardware.os_version().endswith(f"kernel {platform.release()}")
    if platform.system() == "Darwin":
        assert hardware.os_version().startswith(f"macOS {platform.mac_ver()[0]}")
