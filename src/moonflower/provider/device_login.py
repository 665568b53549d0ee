"""A provider machine's side of device login (RFC 8628), and the login it saves.

`start` asks the coordinator for a device code and a user code; `wait_for_token` polls at
the coordinator's interval (longer after `slow_down`, RFC 8628 §3.5) until someone approves
the code in the console, denies it, or it expires. `save` keeps the token in
`<data_dir>/provider-token`, created owner-only (0600) before a byte is written, and the
coordinator it came from in `<data_dir>/provider.json`; `provider serve` uses both when not
told otherwise (`saved_login`). The token never goes to a log, stdout or a command line.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

CLIENT_ID = "moonflower-provider"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_FILE = "provider-token"  # noqa: S105 (a file name)
LOGIN_FILE = "provider.json"
SLOW_DOWN_STEP_S = 5


class LoginFailed(Exception):
    """The login cannot succeed as things are; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


@dataclass(frozen=True, slots=True)
class SavedLogin:
    coordinators: list[str]
    token_file: Path


def start(client: httpx.Client, coordinator: str, machine_name: str) -> DeviceCode:
    try:
        response = client.post(
            f"{coordinator}/oauth/device/code",
            data={"client_id": CLIENT_ID, "machine_name": machine_name},
        )
    except httpx.HTTPError as exc:
        raise LoginFailed(f"cannot reach the coordinator at {coordinator}: {exc}") from None
    if response.status_code != 200:
        raise LoginFailed(
            f"the coordinator at {coordinator} does not offer device login "
            f"(HTTP {response.status_code}); is it a Moonflower coordinator, and up to date?"
        )
    body = response.json()
    return DeviceCode(
        device_code=str(body["device_code"]),
        user_code=str(body["user_code"]),
        verification_uri=str(body["verification_uri"]),
        verification_uri_complete=str(body.get("verification_uri_complete", "")),
        expires_in=int(body["expires_in"]),
        interval=max(1, int(body.get("interval", 5))),
    )


_ENDINGS = {
    "access_denied": "the login was denied in the console; run `moonflower provider login` "
    "again if that was a mistake",
    "expired_token": "the code expired before anyone approved it; run `moonflower provider "
    "login` again and approve the new code sooner",
    "invalid_grant": "the coordinator no longer knows this code (or its token was already "
    "collected); run `moonflower provider login` again",
}


def wait_for_token(
    client: httpx.Client,
    coordinator: str,
    code: DeviceCode,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[float], None] = lambda _remaining_s: None,
) -> str:
    """The provider token, once the code is approved; `LoginFailed` otherwise."""
    deadline = time.monotonic() + code.expires_in
    interval = code.interval
    form = {"grant_type": DEVICE_GRANT, "device_code": code.device_code, "client_id": CLIENT_ID}
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LoginFailed(_ENDINGS["expired_token"])
        on_wait(remaining)
        sleep(min(interval, max(remaining, 0)))
        try:
            response = client.post(f"{coordinator}/oauth/token", data=form)
        except httpx.HTTPError:
            continue  # a blip; the next poll may get through before the code expires
        body = response.json() if response.content else {}
        if response.status_code == 200 and isinstance(body.get("access_token"), str):
            return str(body["access_token"])
        error = body.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP_S
            continue
        raise LoginFailed(_ENDINGS.get(str(error), f"the coordinator refused: {error}"))


def save(data_dir: Path, token: str, coordinators: list[str]) -> Path:
    """Keep the token (owner-only from its first byte) and where it is for; its path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    token_path = data_dir / TOKEN_FILE
    _write_private(token_path, token + "\n")
    _write_private(
        data_dir / LOGIN_FILE, json.dumps({"coordinator": coordinators}, indent=2) + "\n"
    )
    return token_path


def _write_private(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def saved_login(data_dir: Path) -> SavedLogin | None:
    """What `provider login` saved in `data_dir`, if it did."""
    token_file = data_dir / TOKEN_FILE
    if not token_file.is_file():
        return None
    coordinators: list[str] = []
    try:
        saved = json.loads((data_dir / LOGIN_FILE).read_text())
        coordinators = [str(url) for url in saved.get("coordinator", [])]
    except (OSError, ValueError, AttributeError):
        pass
    return SavedLogin(coordinators=coordinators, token_file=token_file)


def loose_permissions(path: Path) -> str | None:
    """Why a secret file is readable by others than its owner, or None if it is not."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return (
            f"{path} can be read by other users (mode {mode:04o}); "
            f"make it owner-only with: chmod 600 {path}"
        )
    return None
