"""`moonflower up` brings a whole network up in one command; the official OpenAI SDK, pointed
at what it prints, completes chats with the real model; Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.network import free_port

pytestmark = pytest.mark.slow


def test_up_prints_working_settings_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moonflower",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline().decode()
            if not line and process.poll() is not None:
                break
            output.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        printed = "".join(output)
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", printed, re.MULTILINE))
        assert exports["OPENAI_BASE_URL"] == f"http://127.0.0.1:{port}/v1"
        assert exports["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
        assert exports["OPENAI_API_KEY"].startswith("mf-")
        assert exports["ANTHROPIC_API_KEY"] == exports["OPENAI_API_KEY"]
        assert "curl " in printed
        assert "loading" in printed.lower()  # progress feedback while the model loads

        client = openai.OpenAI(
            base_url=exports["OPENAI_BASE_URL"], api_key=exports["OPENAI_API_KEY"], max_retries=0
        )
        model = client.models.list().data[0].id
        messages = [{"role": "user", "content": "Say hello."}]
        whole = client.chat.completions.create(model=model, messages=messages, max_tokens=16)  # type: ignore[arg-type]
        assert whole.choices[0].message.content
        assert whole.usage is not None and whole.usage.completion_tokens > 0
        streamed = list(
            client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=16,
                stream=True,  # type: ignore[arg-type]
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)

        # The key's demo account started with $10 and paid for both answers.
        balance = httpx.get(
            f"{exports['OPENAI_BASE_URL']}/payments/balance",
            headers={"Authorization": f"Bearer {exports['OPENAI_API_KEY']}"},
        ).json()
        assert balance["account_name"] == "demo"
        assert 0 < balance["balance_micro_usd"] < 10_000_000
        assert balance["held_micro_usd"] == 0
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0
