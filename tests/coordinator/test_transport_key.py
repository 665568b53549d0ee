"""The coordinator's sealed-transport key file: created once with a private mode and reused,
refused when others may read it or when it holds anything but one key, one key for every
replica that races to create it (threads and real processes), and the coordinator app and
its command line publishing the file's key."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from moonflower.cli.coordinator import coordinator_settings, serving_transport_keys
from moonflower.client.sealed import CoordinatorKey, key_id
from moonflower.coordinator import transport_key
from moonflower.coordinator.app import create_app
from moonflower.coordinator.transport_key import (
    TransportKeyError,
    default_key_file,
    load_or_create,
    transport_keys,
)
from moonflower.crypto.envelope import EncryptionKeyPair
from moonflower.crypto.signing import b64d, b64e
from moonflower.settings import CoordinatorSettings

# RFC 7748 §6.1 Alice: her key id is the golden one in tests/client/test_sealed.py.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_KID = "300c9c9603b92a4b"
RACE_TIMEOUT_S = 60.0
RACERS = 4


def write_key_file(path: Path, content: bytes, mode: int = 0o600) -> None:
    path.write_bytes(content)
    path.chmod(mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_missing_key_file_is_created_private_with_one_line_of_base64(tmp_path: Path) -> None:
    path = tmp_path / "state" / "transport-key"
    keys = load_or_create(path)
    content = path.read_bytes()
    assert content.endswith(b"\n") and content.count(b"\n") == 1
    private = b64d(content.decode().removesuffix("\n"))
    assert EncryptionKeyPair.from_private_bytes(private).public_key == keys.public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert leftovers(path.parent) == []


def test_an_existing_key_file_is_reused_so_the_kid_outlives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "transport-key"
    first = load_or_create(path)
    content = path.read_bytes()
    again = load_or_create(path)
    assert again.public_key == first.public_key
    assert path.read_bytes() == content


def test_a_key_file_written_by_hand_is_read_with_or_without_its_newline(tmp_path: Path) -> None:
    for ending in (b"", b"\n"):
        path = tmp_path / f"key{len(ending)}"
        write_key_file(path, b64e(ALICE_PRIVATE).encode() + ending, 0o400)
        assert CoordinatorKey.of(load_or_create(path).public_key).kid == ALICE_KID


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_a_key_file_others_may_read_or_change_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "transport-key"
    content = b64e(ALICE_PRIVATE).encode() + b"\n"
    write_key_file(path, content, mode)
    with pytest.raises(TransportKeyError) as refused:
        load_or_create(path)
    assert f"{mode:04o}" in refused.value.message
    assert f"chmod 600 {path}" in refused.value.message
    assert path.read_bytes() == content  # left for the operator, never replaced


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        b"not base64 at all\n",
        b64e(ALICE_PRIVATE[:31]).encode() + b"\n",
        b64e(ALICE_PRIVATE + b"\x00").encode() + b"\n",
        b64e(ALICE_PRIVATE).encode() + b"\n\n",
        b64e(ALICE_PRIVATE).encode() + b"\r\n",
        b" " + b64e(ALICE_PRIVATE).encode() + b"\n",
        b64e(ALICE_PRIVATE).encode() + b"\n" + b64e(ALICE_PRIVATE).encode() + b"\n",
        b64e(ALICE_PRIVATE).encode().rstrip(b"=") + b"\n",
        b64e(ALICE_PRIVATE)[:-2].encode() + b"p=\n",  # non-zero unused bits: not canonical
        ALICE_PRIVATE,
        ALICE_PRIVATE.hex().encode() + b"\n",
        b"A" * 5000,
    ],
)
def test_a_key_file_not_holding_exactly_one_key_is_refused_without_quoting_it(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "transport-key"
    write_key_file(path, content)
    with pytest.raises(TransportKeyError) as refused:
        load_or_create(path)
    assert "one line" in refused.value.message
    assert b64e(ALICE_PRIVATE)[:12] not in refused.value.message
    assert path.read_bytes() == content


def test_a_key_path_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir(mode=0o700)
    with pytest.raises(TransportKeyError, match="not a regular file"):
        load_or_create(directory)
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(TransportKeyError, match="not a regular file"):
        load_or_create(fifo)  # refused at once: opening it never waits for a writer


def test_a_key_file_that_cannot_be_read_or_created_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "a-file"
    parent.write_bytes(b"")
    with pytest.raises(TransportKeyError, match=r"the transport key file .*: Not a directory"):
        load_or_create(parent / "transport-key")


def test_without_a_file_every_process_gets_a_fresh_key() -> None:
    assert transport_keys(None).public_key != transport_keys(None).public_key


def racing_fresh_keys(barrier: Any) -> Callable[[], bytes]:
    """`_fresh_private_key` that returns only once every racer has asked for one: each of
    them has then found no file, so all of them write one and all but one lose the link."""
    fresh = transport_key._fresh_private_key

    def together() -> bytes:
        barrier.wait(RACE_TIMEOUT_S)
        return fresh()

    return together


def test_threads_racing_to_create_the_key_file_all_use_the_one_that_won(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "transport-key"
    monkeypatch.setattr(
        transport_key, "_fresh_private_key", racing_fresh_keys(threading.Barrier(RACERS))
    )
    found: list[bytes] = []
    racers = [
        threading.Thread(target=lambda: found.append(load_or_create(path).public_key))
        for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(RACE_TIMEOUT_S)
    assert len(found) == RACERS and len(set(found)) == 1
    on_disk = b64d(path.read_text().removesuffix("\n"))
    assert EncryptionKeyPair.from_private_bytes(on_disk).public_key == found[0]
    assert leftovers(tmp_path) == []


def race_in_child(path: str, barrier: Any, results: Any) -> None:
    """One racing process (started by `spawn`, so this module is imported afresh there)."""
    transport_key._fresh_private_key = racing_fresh_keys(barrier)
    results.put(key_id(load_or_create(Path(path)).public_key))


def test_processes_racing_to_create_the_key_file_all_use_the_one_that_won(
    tmp_path: Path,
) -> None:
    path = tmp_path / "transport-key"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(RACERS)
    results = context.Queue()
    racers = [
        context.Process(target=race_in_child, args=(str(path), barrier, results))
        for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    try:
        kids = [results.get(timeout=RACE_TIMEOUT_S) for _ in racers]
    finally:
        for racer in racers:
            racer.join(RACE_TIMEOUT_S)
    assert [racer.exitcode for racer in racers] == [0] * RACERS
    assert set(kids) == {key_id(load_or_create(path).public_key)}
    assert leftovers(tmp_path) == []


async def published_key(app: Any) -> CoordinatorKey:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://coordinator") as client:
        response = await client.get("/v1/encryption-key")
    return CoordinatorKey.from_document(response.json())


async def test_the_app_publishes_the_key_in_its_key_file(tmp_path: Path) -> None:
    path = tmp_path / "transport-key"
    write_key_file(path, b64e(ALICE_PRIVATE).encode() + b"\n")
    settings = CoordinatorSettings(data_dir=tmp_path, transport_key_file=path)
    assert (await published_key(create_app(settings))).kid == ALICE_KID
    assert (await published_key(create_app(settings))).kid == ALICE_KID  # a restart, or a replica
    assert (await published_key(create_app(CoordinatorSettings(data_dir=tmp_path)))).kid != (
        ALICE_KID
    )  # no file setting: a key of its own, as before


def test_the_app_refuses_an_unusable_key_file(tmp_path: Path) -> None:
    path = tmp_path / "transport-key"
    write_key_file(path, b64e(ALICE_PRIVATE).encode(), 0o644)
    with pytest.raises(TransportKeyError):
        create_app(CoordinatorSettings(data_dir=tmp_path, transport_key_file=path))


def test_the_command_line_keeps_the_key_in_the_data_dir_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("MOONFLOWER_TRANSPORT_KEY_FILE", "MOONFLOWER_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)
    settings = coordinator_settings(None, None, tmp_path, None)
    assert settings.transport_key_file == default_key_file(tmp_path) == tmp_path / "transport-key"
    elsewhere = tmp_path / "secrets" / "key"
    monkeypatch.setenv("MOONFLOWER_TRANSPORT_KEY_FILE", str(elsewhere))
    assert coordinator_settings(None, None, tmp_path, None).transport_key_file == elsewhere


def test_the_command_line_ends_with_a_clear_error_on_an_unusable_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "transport-key"
    write_key_file(path, b"garbage\n")
    with pytest.raises(typer.Exit) as ended:
        serving_transport_keys(CoordinatorSettings(data_dir=tmp_path, transport_key_file=path))
    assert ended.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The transport key file") and "garbage" not in err
