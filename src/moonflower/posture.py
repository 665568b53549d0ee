"""What a machine's security posture says, and which of its values rule out trust.

Shared by the provider, which reports its posture in its attestation statement and every
challenge answer (`provider.posture` reads it from the OS), and the coordinator, which refuses
trust to a posture with a required protection turned off (`coordinator.trust`). Owns the
posture keys, `REQUIRED_FOR_TRUST` and `is_negative()`. A value is True or False only when
the OS said so; None means "this OS cannot tell". Pure: no I/O, and nothing of either side.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

Posture = dict[str, bool | None]

SIP_ENABLED = "sip_enabled"
SECURE_BOOT = "secure_boot"
SEALED_SYSTEM_VOLUME = "sealed_system_volume"
KERNEL_LOCKDOWN = "kernel_lockdown"

REQUIRED_FOR_TRUST: frozenset[str] = frozenset({SIP_ENABLED, SECURE_BOOT, SEALED_SYSTEM_VOLUME})
"""Keys whose explicit False rules out trust. These are the protections that keep a Mac's own
administrator from patching the OS under a running provider, and each is on by default, so a
False means someone turned it off. `secure_boot` means the same on Linux (the firmware verified
what booted) and is required there too. `kernel_lockdown` is reported but not required: `none`
is the mainline default, even on kernels that enforce module signatures."""


def is_negative(
    posture: Mapping[str, bool | None], *, required: Collection[str] = REQUIRED_FOR_TRUST
) -> list[str]:
    """The keys of `required` that `posture` reports as explicitly False, sorted.

    None (cannot tell) and absent keys are not negative; whether a missing key is acceptable
    is the verifier's policy, not a posture fact."""
    return sorted(key for key in required if posture.get(key) is False)
