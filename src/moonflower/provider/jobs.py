"""Runs jobs on the provider's engine and streams their events to the coordinator.

The engine's blocking `generate` runs on a worker thread; its events cross into asyncio
through a queue and leave as `job_event` frames. Cancelling a job sets the event the engine
checks before every token, so generation stops within one token. This module never logs
prompt or completion text: only ids, reasons and token counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from moonflower import wire
from moonflower.crypto.signing import Signer
from moonflower.generation import (
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    Usage,
)
from moonflower.provider.engines.base import Engine
from moonflower.provider.flow import JobFlow
from moonflower.receipts import OutputTally, build_receipt

log = logging.getLogger(__name__)

SendFrame = Callable[[str], Awaitable[None]]


class JobOutput(Protocol):
    """Where one job's events and receipt go (sealed on the way, by the agent)."""

    async def event(self, event: GenerationEvent) -> None: ...

    async def receipt(self, receipt: wire.SignedBlob) -> None: ...


class JobRunner:
    """Every job of one provider process, whichever connection asked for it."""

    def __init__(self, engine: Engine, signer: Signer, *, batch_interval_s: float = 0.0) -> None:
        self._engine = engine
        self._signer = signer
        self._batch_interval_s = batch_interval_s
        self._slots = asyncio.Semaphore(engine.max_concurrent_jobs)
        self._executor = ThreadPoolExecutor(
            max_workers=engine.max_concurrent_jobs, thread_name_prefix="engine"
        )
        self._cancels: dict[str, threading.Event] = {}
        self._flows: dict[str, JobFlow] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.jobs_served = 0
        self.tokens_generated = 0

    @property
    def active_jobs(self) -> int:
        return len(self._cancels)

    def submit(self, job_id: str, request: GenerationRequest, send: JobOutput) -> None:
        if job_id in self._cancels:
            log.warning("ignoring a second request for job %s", job_id)
            return
        cancel = threading.Event()
        self._cancels[job_id] = cancel
        task = asyncio.create_task(self._run(job_id, request, cancel, send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self, job_id: str) -> None:
        cancel = self._cancels.get(job_id)
        if cancel is not None:
            log.info("job %s: cancel received", job_id)
            cancel.set()
            self._wake(job_id)

    def grant(self, job_id: str, events: int) -> None:
        """The coordinator's consumer read `events` more of the job: send that many more."""
        flow = self._flows.get(job_id)
        if flow is not None:
            flow.grant(events)

    def _wake(self, job_id: str) -> None:
        flow = self._flows.get(job_id)
        if flow is not None:
            flow.wake()

    def cancel_all(self) -> None:
        for job_id, cancel in self._cancels.items():
            cancel.set()
            self._wake(job_id)

    async def wait_idle(self, deadline_s: float) -> bool:
        """Wait until no job is running (True) or `deadline_s` passes (False)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_s
        while self.active_jobs:
            if loop.time() >= until:
                return False
            await asyncio.sleep(0.05)
        return True

    async def drain(self) -> None:
        """Cancel everything and wait for the workers to stop."""
        self.cancel_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _run(
        self, job_id: str, request: GenerationRequest, cancel: threading.Event, send: JobOutput
    ) -> None:
        tally = OutputTally()
        try:
            async with self._slots:
                if cancel.is_set():
                    await self._send(job_id, _cancelled_before_start(), send, cancel, tally)
                else:
                    await self._generate(job_id, request, cancel, send, tally)
            await self._send_receipt(job_id, request, tally, send)
        finally:
            self._cancels.pop(job_id, None)

    async def _send_receipt(
        self, job_id: str, request: GenerationRequest, tally: OutputTally, send: JobOutput
    ) -> None:
        receipt_json, signature = build_receipt(
            signer=self._signer,
            job_id=job_id,
            model_id=request.model,
            model_sha256=self._engine.card.sha256,
            request=request,
            tally=tally,
        )
        try:
            await send.receipt(wire.SignedBlob(json_text=receipt_json, signature=signature))
        except Exception:
            log.info("job %s: connection lost before its receipt went out", job_id)

    async def _generate(
        self,
        job_id: str,
        request: GenerationRequest,
        cancel: threading.Event,
        send: JobOutput,
        tally: OutputTally,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationEvent | None] = asyncio.Queue()
        flow = self._flows[job_id] = JobFlow(cancel)

        def emit(event: GenerationEvent) -> None:
            if not isinstance(event, Finished | Failed):
                flow.make_room()  # a slow consumer stops the engine here
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def work() -> None:
            try:
                batch = DeltaBatcher(self._batch_interval_s, emit)
                for event in self._engine.generate(request, cancel):
                    batch.add(event)
                batch.flush()
            except Exception as exc:  # a broken engine must not take the provider down
                failure = Failed(
                    code="engine_error", message=f"engine failed: {type(exc).__name__}"
                )
                loop.call_soon_threadsafe(queue.put_nowait, failure)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(self._executor, work)
        try:
            while (event := await queue.get()) is not None:
                is_terminal = isinstance(event, Finished | Failed)
                if not is_terminal:
                    await flow.spend()  # the coordinator's grant bounds what is in flight
                await self._send(job_id, event, send, cancel, tally)
                if not is_terminal:
                    flow.sent()
        finally:
            cancel.set()  # stops the worker if we leave early (connection lost, shutdown)
            flow.wake()
            await asyncio.shield(worker)
            self._flows.pop(job_id, None)

    async def _send(
        self,
        job_id: str,
        event: GenerationEvent,
        send: JobOutput,
        cancel: threading.Event,
        tally: OutputTally,
    ) -> None:
        if cancel.is_set() and not isinstance(event, Finished | Failed):
            return  # the coordinator no longer wants text for this job
        if isinstance(event, Finished):
            # The count the coordinator can check: the tokens of the deltas it was sent
            # (not those of a stop string held back, nor any generated after a cancel).
            usage = Usage(event.usage.prompt_tokens, tally.delta_tokens)
            event = dataclasses.replace(event, usage=usage)
        if isinstance(event, Finished | Failed):
            self._note_end(job_id, event)
        tally.add(event)  # the receipt covers exactly what was sent
        try:
            await send.event(event)
        except Exception:
            log.info("job %s: connection lost, stopping", job_id)
            cancel.set()

    def _note_end(self, job_id: str, event: Finished | Failed) -> None:
        self.jobs_served += 1
        if isinstance(event, Finished):
            self.tokens_generated += event.usage.completion_tokens
            log.info(
                "job %s ended: reason=%s prompt_tokens=%d completion_tokens=%d",
                job_id,
                event.reason,
                event.usage.prompt_tokens,
                event.usage.completion_tokens,
            )
        else:
            log.info("job %s failed: code=%s", job_id, event.code)


class DeltaBatcher:
    """Joins text deltas that arrive within `interval_s` of the last one sent.

    Every frame wakes the provider's event loop, the coordinator and the consumer; on a
    machine where the engine uses every core, those wake-ups stall its threads. The first
    delta goes out at once, later ones at most `interval_s` apart, and any other event
    flushes what is pending first, so order and content are unchanged.
    """

    def __init__(self, interval_s: float, emit: Callable[[GenerationEvent], None]) -> None:
        self._interval_s = interval_s
        self._emit = emit
        self._pending: list[TextDelta] = []
        self._last_sent = -float("inf")

    def add(self, event: GenerationEvent) -> None:
        if not isinstance(event, TextDelta):
            self.flush()
            self._emit(event)
            return
        self._pending.append(event)
        if time.monotonic() - self._last_sent >= self._interval_s:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._emit(
                TextDelta(
                    text="".join(d.text for d in self._pending),
                    logprobs=tuple(lp for d in self._pending for lp in d.logprobs),
                    tokens=sum(d.tokens for d in self._pending),
                )
            )
            self._pending.clear()
            self._last_sent = time.monotonic()


def _cancelled_before_start() -> Finished:
    return Finished(reason="cancelled", usage=Usage(prompt_tokens=0, completion_tokens=0))
