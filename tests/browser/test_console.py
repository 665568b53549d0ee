"""The console in a real browser, against a real coordinator and the real model, as one
person's first day: sign up; let a machine in with device login and see `provider serve`
connect with the issued token; the operator sees it with its trust level and grants credit;
create a key; chat in the playground and watch the answer stream, with its receipt verified
in the browser; the balance drops by exactly the cost the usage page shows; revoke the key
and see the SDK refused; the charts have data."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import Screenshots
from tests.support.device_login import read_until, start_login
from tests.support.network import STARTUP_TIMEOUT_S, LocalNetwork, wait_until

pytestmark = pytest.mark.slow

USER = "ada@example.org"
ADMIN = "operator@example.org"
PASSWORD = "correct horse battery staple"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(
        tmp_path_factory.mktemp("console"),
        settings={"DEVICE_POLL_INTERVAL_S": "1", "STATS_CACHE_S": "0"},
    )
    try:
        net.start_coordinator()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "moonflower",
                "users",
                "create",
                ADMIN,
                "--admin",
                *net.db_args(),
            ],
            input=PASSWORD,
            text=True,
            env=net.env(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield net
    finally:
        net.stop()


def sign_up(page: Page, base: str, email: str, screenshots: Screenshots) -> None:
    page.goto(f"{base}/console/#/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    expect(page.locator("#nav")).to_be_hidden()  # nothing to navigate before signing in
    screenshots.take(page, "signup")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("main[data-page=overview]")).to_be_visible(timeout=WAIT_MS)


def sign_in(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/console/#/signin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("main[data-page=overview]")).to_be_visible(timeout=WAIT_MS)


def visit(page: Page, base: str, route: str) -> None:
    page.goto(f"{base}/console/#/{route}")
    page.reload()  # a new hash on the same page does not always reload the data
    expect(page.locator(f"main[data-page={route}]")).to_be_visible(timeout=WAIT_MS)


def dollars(text: str) -> Decimal:
    return Decimal(text.strip().removeprefix("$"))


def chart_has_data(page: Page, selector: str) -> None:
    line = page.locator(f"{selector} path.line")
    expect(line).to_have_count(1)
    box = line.bounding_box()
    assert box is not None
    assert box["width"] > 100
    assert page.locator(f"{selector} circle").count() >= 1  # a point above zero


def let_a_machine_in(network: LocalNetwork, page: Page, screenshots: Screenshots) -> str:
    """`provider login` on a new machine, approved in this page; returns its data dir."""
    data_dir = network.root / "ada-machine"
    login = start_login(network, data_dir, "ada-mac")
    found, _shown = read_until(login, r"open (\S+/console/device\?code=[A-Z-]+)")
    page.goto(found.group(1))
    expect(page.locator(".code-box")).to_have_text(re.compile(r"[A-Z]{4}-[A-Z]{4}"))
    expect(page.get_by_text("ada-mac")).to_be_visible()
    screenshots.take(page, "device")
    page.locator("#approve").click()
    expect(page.locator("#device-status")).to_contain_text("Approved", timeout=WAIT_MS)
    out, err = login.communicate(timeout=60)
    assert login.returncode == 0, out + err
    return str(data_dir)


def test_a_first_day_in_the_console(
    network: LocalNetwork, browser: Browser, screenshots: Screenshots
) -> None:
    base = network.base_url
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    sign_up(page, base, USER, screenshots)
    expect(page.locator("#nav")).to_be_visible()
    expect(page.locator("#nav-admin")).to_be_hidden()  # Ada is no operator

    # A machine of Ada's joins through device login, and serves with the issued token.
    data_dir = let_a_machine_in(network, page, screenshots)
    before = network.provider_count()
    serve = network.spawn("ada-provider", "provider", "serve", "--data-dir", data_dir)
    wait_until(
        lambda: network.provider_count() > before or not serve.is_running,
        STARTUP_TIMEOUT_S,
        "Ada's machine to connect",
    )
    assert serve.is_running, serve.log()[-2000:]

    # The operator sees it, with its trust level, and grants Ada credit.
    operator = browser.new_page(viewport={"width": 1280, "height": 800})
    sign_in(operator, base, ADMIN)
    expect(operator.locator("#nav-admin")).to_be_visible()
    visit(operator, base, "admin")
    row = operator.locator("tr", has=operator.locator("[data-trust]"), has_text=USER)
    expect(row).to_have_count(1)
    expect(row.locator("[data-trust]")).to_have_text("self_signed")
    operator.get_by_label("Account").select_option(label=USER)
    operator.get_by_label("Dollars").fill("1.00")
    operator.get_by_role("button", name="Grant credit").click()
    expect(operator.get_by_text(f"{USER} now has $1.000000")).to_be_visible(timeout=WAIT_MS)
    screenshots.take(operator, "admin")

    # Ada makes a key; it is shown once.
    visit(page, base, "keys")
    page.get_by_label("Name").fill("playground")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").inner_text(timeout=WAIT_MS)
    assert key.startswith("mf-")
    screenshots.take(page, "keys")

    visit(page, base, "overview")
    available_before = dollars(page.locator("#balance-available").inner_text())
    assert available_before == Decimal("1.000000")

    # The playground streams the answer, then shows the receipt, verified in the browser.
    visit(page, base, "playground")
    page.evaluate(
        """() => {
            window.answerLengths = [];
            const answer = document.getElementById('answer');
            new MutationObserver(() => window.answerLengths.push(answer.textContent.length))
                .observe(answer, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#receipt-verdict")).to_contain_text("Signature verified", timeout=WAIT_MS)
    lengths = page.evaluate("window.answerLengths")
    growing = [n for n in lengths if n > 0]
    assert len(set(growing)) >= 3, lengths  # the text arrived in pieces, not at once
    assert growing == sorted(growing)
    cost = dollars(page.locator("#receipt-cost").inner_text())
    assert cost > 0
    screenshots.take(page, "playground")

    # The usage page shows that cost, and the balance dropped by exactly it.
    visit(page, base, "usage")
    first_row = page.locator("tbody tr").first
    expect(first_row).to_contain_text("completed")
    assert dollars(first_row.locator("td").last.inner_text()) == cost
    screenshots.take(page, "usage")
    visit(page, base, "overview")
    assert dollars(page.locator("#balance-available").inner_text()) == available_before - cost
    chart_has_data(page, "[data-chart='Spending per day']")
    screenshots.take(page, "overview")

    # Revoked in the console, the key no longer works for the SDK.
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    assert client.models.list().data
    visit(page, base, "keys")
    page.locator("button[data-revoke]").click()
    expect(page.locator("p.ok", has_text="Revoked")).to_be_visible(timeout=WAIT_MS)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    # Ada's machine is listed, and it earned from her own job.
    visit(page, base, "machines")
    expect(page.locator("tbody tr", has_text="online")).to_have_count(1)
    machine = page.locator("tbody tr", has_text="self_signed")
    expect(machine).to_have_count(1)
    assert machine.locator("td").nth(5).inner_text() == "1"  # the job it served for Ada
    assert dollars(page.locator("#earned-total").inner_text()) > 0
    chart_has_data(page, "[data-chart='Earnings per day']")
    screenshots.take(page, "machines")

    # The public status page draws the network's traffic.
    page.goto(f"{base}/status")
    expect(page.locator("#providers")).to_have_text("1", timeout=WAIT_MS)
    chart_has_data(page, "#chart")
    screenshots.take(page, "status")
    visit(page, base, "pricing")
    screenshots.take(page, "pricing")
    serve.stop()
