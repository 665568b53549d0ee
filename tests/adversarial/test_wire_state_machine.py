"""Random lives of one provider connection: a hypothesis state machine drives a scripted
provider over the real wire protocol, keeping or breaking its rules at random, against
consumers that read, stall or hang up at any point, on SQLite and on PostgreSQL.

The coordinator is the real app served by uvicorn on a loopback port in the test's own
event loop (`tests/support/inprocess.py` does the same), with a real database, fresh for
every example. Each rule runs one job to its end: the provider plays a random plan (honest
deltas and counts; counts that lie — more tokens than the bytes hold, beyond `max_tokens`,
out of range; a failure code only the coordinator may make; `finished` with the wrong
usage; a receipt that is honest, forged, miscounted, missing or late; falling silent,
disconnecting or sending an oversize frame at any point; answering a cancel or not; long
answers past the flow-control window, waiting for credit or not) while
the consumer streams and reads all, streams and hangs up after k chunks, asks for a whole
answer, asks for one and hangs up, or stalls (reads nothing) and then hangs up. A provider
that was cut off, left a job running, or became untrusted is replaced by a fresh connection
(new key; the same token when it did nothing wrong, a new provider account otherwise, since
"untrusted" binds the account too).

After every step, against the database:

- the ledger sums to zero, and no account is below zero or below what it holds;
- no hold is still `held` once its job has ended (its row in `jobs` exists, waited for a
  bounded time);
- the consumer paid exactly the price of the job's billed tokens, never more completion
  tokens than `max_tokens`, than the provider sent (bounded by their bytes) or — when it
  read the stream to its end or asked for a whole answer — than reached it; nothing at all
  (not even the prompt) when no completion token was billed; a whole answer that failed
  costs nothing. (A consumer that hung up is bounded only by what the provider sent: what
  was handed to its connection before it left counts as delivered, and a whole answer that
  completed just before the hang-up was noticed counts as returned.)
- an honest provider whose job completed and reached the consumer in full earned exactly
  its share: the coordinator's price of (its prompt claim bounded by the coordinator's
  bound, the tokens it delivered) minus the platform fee; a provider never earns more than
  the consumer paid minus the fee, and nothing for a job that made it untrusted;
- trust: a provider that only kept the rules (whatever the consumer did) is still trusted,
  and comes back with the same token after a disconnect; one whose lie reached a
  coordinator that read its whole job (the consumer read to the end, and neither a
  time-out nor a disconnect cut it short) is untrusted; a job that left its provider
  untrusted paid nobody;
- statuses: 200; 400 only when the provider itself refused the request as invalid; 502
  (`ProviderFailed`: the provider failed, broke the protocol, went away, or a whole answer
  did not complete) and 504 (`UpstreamTimeout`: no first token in time, or a whole answer
  whose provider fell silent) are the only 5xx a provider can cause, per the OpenAI
  dialect's mapping (`coordinator/dialects/openai_errors.py`). Never 500, and never 503:
  a routable provider is connected before every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import orjson
import pytest
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import event as note_path
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import select
from websockets.exceptions import WebSocketException

from moonflower import wire
from moonflower.cli.coordinator import uvicorn_server
from moonflower.coordinator.app import create_app
from moonflower.coordinator.assembly import build_services
from moonflower.coordinator.billing import prompt_token_bound
from moonflower.coordinator.services import Services
from moonflower.coordinator.session import ProviderSession
from moonflower.generation import Failed, Finished, GenerationEvent, Started, TextDelta, Usage
from moonflower.ledger import keys
from moonflower.ledger.book import deposit
from moonflower.ledger.database import default_database_url
from moonflower.ledger.pricing import PriceList
from moonflower.ledger.tables import Hold, Job
from moonflower.settings import CoordinatorSettings, PriceSetting
from tests.adversarial.conftest import Books
from tests.support.cluster import redis_url_for_cluster
from tests.support.network import free_port
from tests.support.postgres import PostgresServer
from tests.support.scripted_provider import (
    ScriptedJob,
    ScriptedProvider,
    is_routable_entry,
    provider_entry,
)

T = TypeVar("T")

MODEL = "scripted"
MAX_TOKENS = 100
LONG_DELTAS = 72
"""Deltas of a long answer: more events than the flow-control window, so an honest provider
waits for `job_credit` and a flooding one may overrun it."""
CONTEXT_LENGTH = 4096
"""`scripted_provider.model_card`'s context: the coordinator's prompt bound uses it."""
STEP_TIMEOUT_S = 40.0
"""No step of an honest coordinator takes a tenth of this."""
SETTLE_TIMEOUT_S = 20.0
WAIT_S = 15.0

SETTINGS: dict[str, Any] = {
    "receipt_timeout_s": 1.5,
    "first_event_timeout_s": 1.0,
    "first_token_timeout_s": 1.0,
    "idle_timeout_s": 1.0,
    "queue_max_wait_s": 5.0,
    "max_job_duration_s": 30.0,
    "default_price": PriceSetting(input=1_000_000, output=2_000_000),
    "minimum_charge_micro_usd": 0,
    "platform_fee_percent": 10.0,
}
"""Short time-outs, so the silent and receipt-less plans cost about a second each."""

LEGITIMATE_FAILURES = {502, 504}
OVERSIZE = wire.MAX_FRAME_BYTES + 1024
"""A `job_event` frame just over what the coordinator's WebSocket accepts."""


# --- plans -----------------------------------------------------------------------------------

Lie = Literal[
    "none", "overclaim", "beyond_max", "out_of_range", "illegal_code", "wrong_usage", "flood"
]
"""`flood`: send without waiting for `job_credit` (an honest provider waits)."""
End = Literal["finish", "fail", "refuse", "cut", "silent", "oversize"]
ReceiptKind = Literal["honest", "forged", "miscounted", "missing", "late"]
Mode = Literal["stream_all", "stream_hangup", "whole", "whole_hangup", "stall_hangup"]


@dataclass(frozen=True)
class ProviderPlan:
    prompt_tokens: int
    tokens: tuple[int, ...]
    """Honest per-delta counts (each at most its text's bytes)."""
    lie: Lie
    lie_at: int
    lie_value: int
    end: End
    end_at: int
    """For cut / silent / oversize: how many frames go out first (the terminal included
    when it is the last)."""
    receipt: ReceiptKind
    answers_cancel: bool
    lockstep: bool
    """Send each delta only once the consumer read the one before (stream consumers)."""

    @property
    def keeps_the_rules(self) -> bool:
        """Nothing this plan can do is a reason to untrust it."""
        return (
            self.lie in ("none", "overclaim")
            and self.end != "oversize"
            and self.receipt == "honest"
        )


@dataclass(frozen=True)
class ConsumerPlan:
    mode: Mode
    hang_up_after: int

    @property
    def reads_everything(self) -> bool:
        return self.mode in ("stream_all", "whole")


def word(i: int) -> str:
    return f"w{i} "


@st.composite
def provider_plans(draw: st.DrawFn) -> ProviderPlan:
    is_long = draw(st.sampled_from([False, False, False, True]))
    count = LONG_DELTAS if is_long else draw(st.integers(0, 6))
    tokens = tuple(1 if is_long else draw(st.integers(1, 2)) for _ in range(count))
    lies: list[Lie] = ["overclaim", "beyond_max", "out_of_range", "illegal_code", "wrong_usage"]
    lies += ["flood"] if is_long else []
    lie = draw(st.sampled_from(["none", "none", "none", "none", *lies]))
    ends: list[End] = ["finish", "finish", "finish", "finish", "fail", "refuse", "cut"]
    end = draw(st.sampled_from([*ends, "silent", "oversize"]))
    frames = 1 + count + (1 if lie in ("beyond_max", "out_of_range") else 0)
    end_at = draw(st.integers(0, frames + (0 if end == "silent" else 1)))
    value = draw(st.sampled_from([-1, (1 << 24) + 1, 1 << 31, 1 << 63]))
    if lie == "overclaim":
        value = draw(st.integers(1, 5))
    return ProviderPlan(
        prompt_tokens=draw(st.integers(1, 30)),
        tokens=tokens,
        lie=lie,
        lie_at=draw(st.integers(0, count)),
        lie_value=value,
        end=end,
        end_at=end_at,
        receipt=draw(st.sampled_from(["honest"] * 4 + ["forged", "miscounted", "missing", "late"])),
        answers_cancel=draw(st.booleans()),
        lockstep=draw(st.booleans()),
    )


consumer_plans = st.builds(
    ConsumerPlan,
    mode=st.sampled_from(["stream_all", "stream_hangup", "whole", "whole_hangup", "stall_hangup"]),
    hang_up_after=st.integers(0, 6),
)


# --- one job, both sides ---------------------------------------------------------------------


@dataclass
class Exchange:
    """What the two sides of one job did, and the condition both wait on."""

    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    job: ScriptedJob | None = None
    frames_sent: int = 0
    provider_done: bool = False
    chunks_read: int = 0
    consumer_done: bool = False
    lie_sent: bool = False
    """A frame the coordinator must refuse went out."""
    terminal_sent: Finished | Failed | None = None
    answered: bool = False
    """A first output (a delta, or a finished answer) went out before any cancel: the job
    reached its consumer, so its receipt is checked."""
    answered_cancel: bool = False
    receipt_lie: bool = False
    """A receipt that must not verify went out."""
    receipt_withheld: bool = False
    """No receipt came in time though the provider ended the job and stayed connected."""
    cut: bool = False

    def has_read(self, chunks: int) -> bool:
        return self.chunks_read >= chunks or self.consumer_done

    async def note(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self, name, value)
        async with self.changed:
            self.changed.notify_all()

    async def wait(self, condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(condition)
            return True
        return False


@dataclass
class Answer:
    status: int = 0
    text: str = ""
    finished: bool = False
    error: bool = False


def frames_of(plan: ProviderPlan) -> list[GenerationEvent | bytes]:
    """The provider's frames in order (bytes: raw event JSON the types cannot hold), the
    terminal one last."""
    frames: list[GenerationEvent | bytes] = [Started(plan.prompt_tokens)]
    deltas: list[GenerationEvent | bytes] = [
        TextDelta(text=word(i), tokens=n) for i, n in enumerate(plan.tokens)
    ]
    if plan.lie == "overclaim" and deltas:
        at = min(plan.lie_at, len(deltas) - 1)
        text = word(at)
        deltas[at] = TextDelta(text=text, tokens=len(text.encode()) + plan.lie_value)
    elif plan.lie == "beyond_max":
        deltas.insert(plan.lie_at, TextDelta(text="x", tokens=MAX_TOKENS + 1))
    elif plan.lie == "out_of_range":
        raw = orjson.loads(wire.event_bytes(TextDelta(text="x", tokens=1)))
        raw["tokens"] = plan.lie_value
        deltas.insert(plan.lie_at, orjson.dumps(raw))
    frames += deltas
    terminal: GenerationEvent
    if plan.lie == "illegal_code":
        code = "provider_gone" if plan.lie_value % 2 else "timeout"
        terminal = Failed(code=code, message="not mine to say")  # type: ignore[arg-type]
    elif plan.end == "fail":
        terminal = Failed(code="engine_error", message="the engine broke")
    elif plan.end == "refuse":
        terminal = Failed(code="invalid_request", message="no such thing")
    else:
        terminal = Finished("stop", Usage(0, 0))  # counts filled in when sent
    frames.append(terminal)
    return frames


async def send_frame(job: ScriptedJob, frame: GenerationEvent | bytes, plan: ProviderPlan) -> None:
    if isinstance(frame, bytes):
        await job.event_json(frame)
    elif isinstance(frame, Finished):
        lying = 1 if plan.lie == "wrong_usage" else 0
        await job.finish("stop", completion_tokens=job.completion_tokens + lying)
    else:
        await job.event(frame)


async def send_receipt(job: ScriptedJob, plan: ProviderPlan, ex: Exchange, books: Books) -> None:
    if plan.receipt == "honest":
        await job.receipt()
    elif plan.receipt == "forged":
        await job.receipt(corrupt=True)
        await ex.note(receipt_lie=True)
    elif plan.receipt == "miscounted":
        await job.receipt(completion_tokens=job.completion_tokens + 1)
        await ex.note(receipt_lie=True)
    elif plan.receipt == "missing":
        await ex.note(receipt_withheld=True)
    else:  # late: once the coordinator has settled the job without it
        await ex.note(receipt_withheld=True)
        await wait_for_row(books, job.job_id)
        with contextlib.suppress(Exception):
            await job.receipt()


async def wait_for_row(books: Books, job_id: str, timeout: float = SETTLE_TIMEOUT_S) -> Job | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with books.db.sessions() as session:
            row = await session.get(Job, job_id)
        if row is not None:
            return row
        await asyncio.sleep(0.02)
    return None


# --- the machine -----------------------------------------------------------------------------


class WireMachine(RuleBasedStateMachine):
    """One coordinator, one funded consumer, one provider connection at a time."""

    def __init__(
        self, data_dir: Path, database_url: str | None, redis_url: str | None = None
    ) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stack = AsyncExitStack()
        self.accounts = itertools.count(1)
        self.steps = 0
        self.replicas: list[tuple[Services, uvicorn.Server, asyncio.Task[None]]] = []
        self.run(self.start(data_dir, database_url, redis_url))

    def run(self, step: Awaitable[T]) -> T:
        return self.loop.run_until_complete(step)

    async def start(self, data_dir: Path, database_url: str | None, redis_url: str | None) -> None:
        """One coordinator; with `redis_url`, a second replica on the same database and Redis
        that the consumer calls, its requests forwarded to the provider's."""
        self.settings, self.services = await self.start_replica(data_dir, database_url, redis_url)
        self.base_url = f"http://127.0.0.1:{self.settings.port}"
        consumer_url = self.base_url
        if redis_url is not None:
            front, _ = await self.start_replica(data_dir, database_url, redis_url)
            consumer_url = f"http://127.0.0.1:{front.port}"
        self.books = Books(self.services.db)
        created = await keys.create_key(self.services.db, account_name="consumer")
        await deposit(self.services.db, created.account_id, 100_000_000)
        self.client = await self.stack.enter_async_context(
            httpx.AsyncClient(
                base_url=consumer_url,
                headers={"Authorization": f"Bearer {created.key}"},
                timeout=httpx.Timeout(STEP_TIMEOUT_S, connect=5),
            )
        )
        self.provider_stack: AsyncExitStack | None = None
        await self.connect(token=None)

    async def start_replica(
        self, data_dir: Path, database_url: str | None, redis_url: str | None
    ) -> tuple[CoordinatorSettings, Services]:
        settings = CoordinatorSettings(
            port=free_port(),
            data_dir=data_dir,
            database_url=database_url,
            redis_url=redis_url,
            **SETTINGS,
        )
        services = await build_services(settings)
        server = uvicorn_server(settings, create_app(settings, services))
        serving = asyncio.create_task(server.serve())
        self.replicas.append((services, server, serving))
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                await asyncio.sleep(0.01)
        return settings, services

    async def connect(self, token: str | None) -> None:
        """Replace the provider connection: the same account's `token`, or (None) a new
        provider account; always a new key. The new connection is routable on return."""
        if self.provider_stack is not None:
            await self.provider_stack.aclose()
        if token is None:
            self.account = f"provider-{next(self.accounts)}"
            created = await keys.create_key(
                self.services.db, account_name=self.account, purpose="provider"
            )
            token = created.key
        self.token = token
        self.provider_stack = AsyncExitStack()
        self.provider = await self.provider_stack.enter_async_context(
            ScriptedProvider.connect(self.base_url, token=token, model=MODEL)
        )
        await self.provider.wait_routable(self.base_url)

    def teardown(self) -> None:
        async def stop() -> None:
            if self.provider_stack is not None:
                await self.provider_stack.aclose()
            await self.stack.aclose()
            for services, server, serving in reversed(self.replicas):
                server.should_exit = True
                await asyncio.gather(serving, return_exceptions=True)
                await services.close()

        try:
            self.run(stop())
        finally:
            self.loop.close()

    # --- the rule ------------------------------------------------------------------------

    @rule(plan=provider_plans(), consumer=consumer_plans)
    def one_job(self, plan: ProviderPlan, consumer: ConsumerPlan) -> None:
        self.run(asyncio.wait_for(self.job(plan, consumer), STEP_TIMEOUT_S * 2))

    async def job(self, plan: ProviderPlan, consumer: ConsumerPlan) -> None:
        self.steps += 1
        session = self.session()
        before = await self.books.balances()
        held_before = await self.books.open_holds()
        assert held_before == [], held_before
        while self.provider.pending_jobs():  # a job that came after its consumer gave up
            await self.provider.next_job(1)
        ex = Exchange()
        playing = asyncio.create_task(self.play(plan, consumer, ex))
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                answer = await self.consume(consumer, ex)
                await playing
        finally:
            playing.cancel()
            await asyncio.gather(playing, return_exceptions=True)
        await self.check(plan, consumer, ex, answer, before, session)
        await self.replace_provider_if_needed(plan, ex, session)

    def session(self) -> ProviderSession:
        for session in self.services.registry:
            if session.id == self.provider.provider_id:
                return session
        raise AssertionError(f"provider {self.provider.provider_id} is not connected")

    # --- the provider's side -----------------------------------------------------------

    async def play(self, plan: ProviderPlan, consumer: ConsumerPlan, ex: Exchange) -> None:
        try:
            getting = asyncio.create_task(self.provider.next_job(STEP_TIMEOUT_S))
            gave_up = asyncio.create_task(ex.wait(lambda: ex.consumer_done, STEP_TIMEOUT_S))
            await asyncio.wait({getting, gave_up}, return_when=asyncio.FIRST_COMPLETED)
            gave_up.cancel()
            if not getting.done():
                getting.cancel()
                return
            job = getting.result()
            await ex.note(job=job)
            await self.perform(job, plan, consumer, ex)
        finally:
            await ex.note(provider_done=True)

    async def perform(
        self, job: ScriptedJob, plan: ProviderPlan, consumer: ConsumerPlan, ex: Exchange
    ) -> None:
        """Play `plan`; a connection the coordinator cut off ends the play."""
        with contextlib.suppress(WebSocketException):
            await self.perform_until_cut(job, plan, consumer, ex)

    async def perform_until_cut(
        self, job: ScriptedJob, plan: ProviderPlan, consumer: ConsumerPlan, ex: Exchange
    ) -> None:
        frames = frames_of(plan)
        stops_at = plan.end_at if plan.end in ("cut", "silent", "oversize") else len(frames)
        lockstep = plan.lockstep and consumer.mode in ("stream_all", "stream_hangup")
        deltas = events = 0
        for frame in frames[:stops_at]:
            if job.is_cancelled and plan.answers_cancel:
                await self.answer_cancel(job, plan, ex)
                return
            if lockstep and isinstance(frame, TextDelta) and deltas > 0:
                await ex.wait(functools.partial(ex.has_read, deltas), 5)
            if not isinstance(frame, Finished | Failed):
                events += 1
                if plan.lie != "flood" and not await self.window_allows(job, events):
                    if job.is_cancelled and plan.answers_cancel:
                        await self.answer_cancel(job, plan, ex)
                    return
            await send_frame(job, frame, plan)
            is_lie = isinstance(frame, bytes) or (
                isinstance(frame, TextDelta) and frame.tokens > MAX_TOKENS
            )
            if isinstance(frame, Failed) and plan.lie == "illegal_code":
                is_lie = True
            if isinstance(frame, Finished) and plan.lie == "wrong_usage":
                is_lie = True
            if isinstance(frame, TextDelta):
                deltas += 1
            terminal = frame if isinstance(frame, Finished | Failed) else None
            output = isinstance(frame, TextDelta | Finished) and not job.is_cancelled
            await ex.note(
                answered=ex.answered or output,
                frames_sent=ex.frames_sent + 1,
                lie_sent=ex.lie_sent or is_lie,
                terminal_sent=terminal or ex.terminal_sent,
            )
        if plan.end == "refuse":
            await job.receipt()
        elif plan.end not in ("cut", "silent", "oversize"):
            await send_receipt(job, plan, ex, self.books)
        elif plan.end == "cut":
            await ex.note(cut=True)
            await self.provider.close()
        elif plan.end == "oversize":
            await ex.note(cut=True)
            oversize = orjson.dumps(
                {"type": "job_event", "job_id": job.job_id, "sealed_event": "A" * OVERSIZE}
            ).decode()
            with contextlib.suppress(WebSocketException, OSError):
                await self.provider.send_raw(oversize)
            with contextlib.suppress(TimeoutError):
                await self.provider.closed(WAIT_S)
        elif plan.answers_cancel:  # silent, until the coordinator gives up and cancels
            with contextlib.suppress(TimeoutError):
                await job.wait_cancelled(WAIT_S)
            if job.is_cancelled:
                await self.answer_cancel(job, plan, ex)

    async def window_allows(self, job: ScriptedJob, events: int) -> bool:
        """Wait until the flow-control window covers `events` events; False when the job
        was cancelled or no credit came (the provider then stops, as an agent does)."""
        needed = events - wire.FLOW_WINDOW_EVENTS
        if needed <= 0:
            return True
        with contextlib.suppress(TimeoutError):
            await self.provider.wait_for(
                lambda: job.credit >= needed or job.is_cancelled, 5, "credit"
            )
        return job.credit >= needed and not job.is_cancelled

    async def answer_cancel(self, job: ScriptedJob, plan: ProviderPlan, ex: Exchange) -> None:
        """Stop as an agent does: `finished` (cancelled) with the counts sent, then the
        receipt the plan says."""
        with contextlib.suppress(Exception):
            await job.finish("cancelled")
            await ex.note(terminal_sent=job.sent[-1], answered_cancel=True)
            await send_receipt(job, plan, ex, self.books)

    # --- the consumer's side -----------------------------------------------------------

    async def consume(self, plan: ConsumerPlan, ex: Exchange) -> Answer:
        try:
            if plan.mode in ("whole", "whole_hangup"):
                return await self.whole(plan, ex)
            return await self.stream(plan, ex)
        finally:
            await ex.note(consumer_done=True)

    def body(self, *, stream: bool) -> dict[str, Any]:
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"step {self.steps}"}],
            "max_tokens": MAX_TOKENS,
            "stream": stream,
        }

    async def whole(self, plan: ConsumerPlan, ex: Exchange) -> Answer:
        posting = asyncio.create_task(
            self.client.post("/v1/chat/completions", json=self.body(stream=False))
        )
        if plan.mode == "whole_hangup":
            after = max(plan.hang_up_after, 1)  # the job has reached the provider by then
            await ex.wait(lambda: ex.frames_sent >= after or ex.provider_done)
            if not posting.done():
                posting.cancel()
                await asyncio.gather(posting, return_exceptions=True)
                return Answer()
        response = await posting
        answer = Answer(status=response.status_code)
        if response.status_code == 200:
            choice = response.json()["choices"][0]
            answer.text = choice["message"].get("content") or ""
            answer.finished = choice.get("finish_reason") is not None
        else:
            answer.error = True
        return answer

    async def stream(self, plan: ConsumerPlan, ex: Exchange) -> Answer:
        answer = Answer()
        request = self.client.stream("POST", "/v1/chat/completions", json=self.body(stream=True))
        async with request as response:
            answer.status = response.status_code
            if response.status_code != 200:
                await response.aread()
                answer.error = True
                return answer
            if plan.mode == "stall_hangup":
                await ex.wait(lambda: ex.provider_done)
                return answer
            async for line in response.aiter_lines():
                if plan.mode == "stream_hangup" and ex.chunks_read >= plan.hang_up_after:
                    return answer
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = orjson.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    answer.error = True
                for choice in chunk.get("choices") or ():
                    content = choice.get("delta", {}).get("content")
                    if content:
                        answer.text += content
                        await ex.note(chunks_read=ex.chunks_read + 1)
                    if choice.get("finish_reason") is not None:
                        answer.finished = True
        return answer

    # --- what must hold ----------------------------------------------------------------

    async def check(
        self,
        plan: ProviderPlan,
        consumer: ConsumerPlan,
        ex: Exchange,
        answer: Answer,
        before: dict[str, int],
        session: ProviderSession,
    ) -> None:
        # Statuses: a hang-up has none; otherwise only what the dialect documents.
        note_path(f"{consumer.mode}: status {answer.status or 'none (hung up)'}")
        if answer.status:
            allowed = {200} | LEGITIMATE_FAILURES | ({400} if plan.end == "refuse" else set())
            assert answer.status in allowed, answer
        job = ex.job
        if job is None:
            await self.books.wait_settled(SETTLE_TIMEOUT_S)
            assert answer.status != 200, answer
            return
        row = await wait_for_row(self.books, job.job_id)
        assert row is not None, f"job {job.job_id} was never recorded"
        await self.books.wait_settled(SETTLE_TIMEOUT_S)
        async with self.books.db.sessions() as db_session:
            holds = (await db_session.scalars(select(Hold).where(Hold.job_id == job.job_id))).all()
        assert all(hold.status != "held" for hold in holds), holds
        await self.books.assert_balanced()

        # What the provider sent and what reached the consumer, in billable tokens.
        sent = [event for event in job.sent if isinstance(event, TextDelta)]
        full_text = "".join(event.text for event in sent)
        assert full_text.startswith(answer.text), (answer.text, full_text)
        sent_billable = sum(min(e.tokens, len(e.text.encode())) for e in sent)
        received_billable, length = 0, 0
        for event in sent:
            length += len(event.text)
            if length <= len(answer.text):
                received_billable += min(event.tokens, len(event.text.encode()))

        billed_prompt, billed = row.billed_prompt_tokens, row.billed_completion_tokens
        assert 0 <= billed <= MAX_TOKENS, row
        assert billed <= sent_billable, (row, sent)
        if consumer.reads_everything:
            assert billed <= received_billable, (row, answer, sent)
        if consumer.mode in ("whole", "whole_hangup") and answer.status not in (0, 200):
            assert billed == 0, row
        if billed == 0:
            assert billed_prompt == 0, row
        bound = prompt_token_bound(job.request, CONTEXT_LENGTH)
        assert billed_prompt <= max(min(job.prompt_tokens, bound), 0), row

        after = await self.books.balances()
        prices: PriceList = await self.services.pricing.current()
        cost = prices.cost(MODEL, billed_prompt, billed) if billed else 0
        charged = before["consumer"] - after["consumer"]
        earned = after.get(self.account, 0) - before.get(self.account, 0)
        assert charged == cost, (charged, row)
        assert earned <= cost - prices.fee(cost), (earned, cost)
        untrusted = session.trust.untrusted_reason is not None
        if untrusted:
            assert earned == 0 and charged == 0, (session.trust.untrusted_reason, row)

        # An honest provider, whose whole answer reached the consumer, is paid in full.
        delivered_in_full = (
            consumer.reads_everything
            and answer.status == 200
            and answer.finished
            and not answer.error
            and answer.text == full_text
        )
        if (
            plan.keeps_the_rules
            and plan.end == "finish"
            and isinstance(ex.terminal_sent, Finished)
            and ex.terminal_sent.reason == "stop"
            and delivered_in_full
        ):
            note_path("an honest provider delivered in full: paid its exact share")
            assert billed == sent_billable, (row, sent)
            assert billed_prompt == (min(job.prompt_tokens, bound) if billed else 0), row
            assert earned == cost - prices.fee(cost), (earned, cost, row)

        # Trust: keeping the rules is never a verdict; a lie the coordinator saw is.
        if plan.keeps_the_rules:
            assert not untrusted, session.trust.untrusted_reason
        timed_out = row.error_code == "timeout"  # a lie after that reaches nobody
        if consumer.reads_everything and not ex.cut and not timed_out:
            withheld = ex.receipt_withheld and not ex.answered_cancel
            if ex.lie_sent or (ex.answered and (ex.receipt_lie or withheld)):
                note_path("a lie the coordinator saw in full: untrusted")
                assert untrusted, (plan, ex)

    async def replace_provider_if_needed(
        self, plan: ProviderPlan, ex: Exchange, session: ProviderSession
    ) -> None:
        job = ex.job
        still_running = job is not None and not any(
            isinstance(event, Finished | Failed) for event in job.sent
        )
        if session.trust.untrusted_reason is not None:
            await self.connect(token=None)
        elif self.provider.is_closed or still_running or not await self.is_routable():
            # Nothing held against it: the same account comes back with a new key.
            await self.connect(token=self.token if plan.keeps_the_rules else None)

    async def is_routable(self) -> bool:
        return is_routable_entry(await provider_entry(self.base_url, self.provider.provider_id))

    @invariant()
    def books_balance(self) -> None:
        self.run(self.books.assert_balanced())


RUNS = settings(
    # Each example starts a coordinator and a database; eight examples of ten steps per
    # backend keep the suite inside CI's time, and every run draws new examples.
    max_examples=8,
    stateful_step_count=10,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# A passing run takes a minute or two; a failing one spends longer shrinking.
SHRINKING_TIMEOUT = pytest.mark.timeout(1800)


@pytest.mark.slow
@SHRINKING_TIMEOUT
@pytest.mark.parametrize(
    "backing",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("replicas", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
)
def test_random_providers_and_consumers_keep_the_money_and_trust_rules(
    backing: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    runs = itertools.count()

    def machine() -> WireMachine:
        data_dir = tmp_path / f"run-{next(runs)}"
        url = None
        redis_url = None
        if backing in ("postgres", "replicas"):
            server: PostgresServer = request.getfixturevalue("postgres_server")
            url = server.create_database()
        else:
            url = default_database_url(data_dir)
        if backing == "replicas":
            redis_url = redis_url_for_cluster(request.getfixturevalue("redis_server"))
        return WireMachine(data_dir, url, redis_url)

    run_state_machine_as_test(machine, settings=RUNS)  # type: ignore[arg-type]
