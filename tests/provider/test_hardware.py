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
        assert found.chip is None


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
    assert found.memory_bytes >= 0
    assert found.gpu is None or platform.system() == "Darwin"
