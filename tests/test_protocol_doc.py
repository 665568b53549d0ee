"""docs/protocol.md is the prose version of `wire.py`: the numbers a provider's author reads
there are the ones the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from moonflower import wire
from moonflower.settings import CoordinatorSettings

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


def test_the_documented_protocol_version_is_the_one_spoken() -> None:
    title = re.search(r"^# .*\(version (\d+)\)$", DOC, re.MULTILINE)
    register = re.search(r"must equal the coordinator's \(`(\d+)`\)", DOC)
    assert title is not None and register is not None
    assert int(title.group(1)) == int(register.group(1)) == wire.PROTOCOL_VERSION


def test_the_documented_heartbeat_figures_are_the_ones_enforced() -> None:
    interval = re.search(r"\| heartbeat interval \| (\d+) s", DOC)
    silence = re.search(r"\| silence before the coordinator drops a provider \| (\d+) s", DOC)
    assert interval is not None and silence is not None
    assert float(interval.group(1)) == wire.HEARTBEAT_INTERVAL_S
    assert (
        float(silence.group(1)) == CoordinatorSettings.model_fields["heartbeat_timeout_s"].default
    )


def test_every_model_card_field_is_documented() -> None:
    documented = re.search(r"each `\{([^}]*)\}`", DOC)
    assert documented is not None
    names = {name.strip() for name in documented.group(1).split(",")}
    assert names == set(wire.ModelCard.model_fields)
