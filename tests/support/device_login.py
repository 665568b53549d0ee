"""A provider machine's device login as tests drive it: the form fields and grant the
coordinator's OAuth endpoints expect (spelled out, so a change to the wire values fails
here), and `moonflower provider login` run as a real process whose printed lines are read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.network import LocalNetwork

CLIENT_FORM = {"client_id": "moonflower-provider"}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def start_login(network: LocalNetwork, data_dir: Path, name: str) -> subprocess.Popen[str]:
    """`moonflower provider login` for the machine `name`, saving into `data_dir`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moonflower",
            "provider",
            "login",
            "--coordinator",
            network.base_url,
            "--data-dir",
            str(data_dir),
            "--name",
            name,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=network.env(),
    )


def read_until(login: subprocess.Popen[str], pattern: str) -> tuple[re.Match[str], str]:
    """Read the login's output until `pattern` matches it; the match and what was read."""
    assert login.stdout is not None
    shown = ""
    while (found := re.search(pattern, shown)) is None:
        line = login.stdout.readline()
        assert line, f"login ended before printing {pattern!r}: {shown}"
        shown += line
    return found, shown
