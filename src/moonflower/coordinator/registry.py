"""Live providers: who is connected, what they serve, and which one takes the next job.

The registry holds one `ProviderSession` (`session.py`) per open provider WebSocket. It must
not do I/O beyond the `send` callable each session is given, and knows nothing of HTTP
dialects or storage.

Routing looks only at the sessions serving the requested model (an index kept by `add` and
`remove`), ranks them with `scoring.score` and records how long each pick took.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Container, Iterable, Iterator

from moonflower import wire
from moonflower.coordinator.channel import JobChannel
from moonflower.coordinator.scoring import ProviderStats, score
from moonflower.coordinator.session import ProviderSession
from moonflower.coordinator.trust import ProviderTrust, TrustLevel

log = logging.getLogger(__name__)

TIE_TOLERANCE = 0.05
"""Scores within 5 % of each other count as equal, so that measurement noise does not send
every job to one of several equivalent providers; equals take turns."""
EXPLORE_EVERY = 8
"""One pick in this many for a model goes to a newcomer (a provider whose record is too
short to judge), when one is free: newcomers get measured, yet all of them together — and a
provider reconnecting to shed a bad record — never take more than this share."""
ROUTING_SAMPLES = 2048
"""How many of the latest pick durations `Registry.routing_stats` summarises."""


_Row = tuple[ProviderSession, dict[str, JobChannel], int, ProviderStats, ProviderTrust]
"""A session and the parts of it a pick reads, none of which it ever rebinds: its jobs, its
slots, its stats and its trust."""


class Registry:
    """The set of live provider sessions.

    Only sessions that meet the trust floor and passed a challenge within `freshness_s` are
    offered for jobs or listed as serving; `default_floor` applies unless a caller raises it.
    """

    def __init__(self, *, default_floor: TrustLevel, freshness_s: float) -> None:
        self._sessions: dict[str, ProviderSession] = {}
        self._by_model: dict[str, dict[str, ProviderSession]] = {}
        self._row_cache: dict[str, tuple[_Row, ...]] = {}
        """`_by_model` as rows for picking, rebuilt after a change."""
        self._explore_turn: dict[str, int] = {}
        self._turn = itertools.count()
        self._pick_ns: deque[int] = deque(maxlen=ROUTING_SAMPLES)
        self._picks = 0
        self.default_floor = default_floor
        self.freshness_s = freshness_s

    def add(self, session: ProviderSession) -> None:
        self._sessions[session.id] = session
        for model in {card.id for card in session.registration.models}:
            self._by_model.setdefault(model, {})[session.id] = session
            self._row_cache.pop(model, None)

    def remove(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        for model in {card.id for card in session.registration.models}:
            members = self._by_model.get(model)
            if members is not None and members.pop(session_id, None) is not None:
                self._row_cache.pop(model, None)
                if not members:
                    del self._by_model[model]
                    self._explore_turn.pop(model, None)
        session.close()

    def __iter__(self) -> Iterator[ProviderSession]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def count_by_model_and_trust(self) -> dict[tuple[str, str], int]:
        """Connected providers by (model, trust level label), untrusted ones as `untrusted`."""
        counts: dict[tuple[str, str], int] = {}
        for session in self._sessions.values():
            trust = session.trust
            label = "untrusted" if trust.untrusted_reason is not None else trust.level.label
            for card in session.registration.models:
                counts[card.id, label] = counts.get((card.id, label), 0) + 1
        return counts

    def serving(self, model: str, floor: TrustLevel | None = None) -> list[ProviderSession]:
        """Sessions that may take a job for `model` now, at trust `floor` or above."""
        level = max(floor or self.default_floor, self.default_floor)
        now = time.monotonic()
        return [s for s in self._members(model) if s.is_routable(level, self.freshness_s, now)]

    def connected_for(self, model: str) -> bool:
        """Is any connected provider, trusted or not, serving `model`?"""
        return bool(self._by_model.get(model))

    def has_free_slot_for(self, model: str, floor: TrustLevel | None = None) -> bool:
        """Would `pick` find a provider for `model` now?"""
        level = max(floor or self.default_floor, self.default_floor)
        now = time.monotonic()
        return any(
            s.has_free_slot and s.is_routable(level, self.freshness_s, now)
            for s in self._members(model)
        )

    def routable_count(self) -> int:
        return sum(
            1
            for s in self._sessions.values()
            if s.is_routable(self.default_floor, self.freshness_s)
        )

    def pick(
        self,
        model: str,
        floor: TrustLevel | None = None,
        *,
        exclude: Container[str] = (),
    ) -> ProviderSession | None:
        """The best-scoring provider that may take a job for `model` now (serves it, meets
        the trust floor, passed a recent challenge, has a free slot, and its id is not in
        `exclude`), or None. Equal scores take turns; every `EXPLORE_EVERY`-th pick prefers
        a newcomer. O(providers serving `model`)."""
        started_ns = time.perf_counter_ns()
        try:
            level = max(floor or self.default_floor, self.default_floor)
            return self._best(model, level, exclude)
        finally:
            self._pick_ns.append(time.perf_counter_ns() - started_ns)
            self._picks += 1

    def _best(
        self, model: str, level: TrustLevel, exclude: Container[str]
    ) -> ProviderSession | None:
        rows = self._rows(model)
        if not rows:
            return None
        explore_turn = self._explore_turn.get(model, 0)
        self._explore_turn[model] = explore_turn + 1
        start = next(self._turn) % len(rows)
        now = time.monotonic()
        freshness_s = self.freshness_s
        raise_by = 1.0 + TIE_TOLERANCE
        best: ProviderSession | None = None
        best_score = 0.0
        newcomer: ProviderSession | None = None
        newcomer_score = 0.0
        # Walk from a rotating start and keep the first of equals: a later candidate must
        # beat the one kept by more than the tolerance to replace it. Only a candidate that
        # would be kept is checked further (model loaded, routable, not excluded), so most
        # cost one score. The loop spells out `has_free_slot` and `load`, and reads each
        # session's parts from its row: it runs for every provider of the model on every
        # request, so the memory it touches per provider is what a pick costs.
        for session, jobs, slots, stats, trust in rows[start:] + rows[:start]:
            active = len(jobs)
            if active >= slots:
                continue
            load = active / slots
            value = score(stats, trust=trust.level, load=load)
            if value <= best_score * raise_by and (
                value <= newcomer_score * raise_by or stats.is_proven
            ):
                continue
            if (
                session._is_closed
                or not trust.is_routable(level, freshness_s=freshness_s, now=now)
                or session.id in exclude
            ):
                continue
            if not session.is_loaded(model):
                value = score(stats, trust=trust.level, load=load, is_loaded=False)
            if value > best_score * raise_by:
                best, best_score = session, value
            if value > newcomer_score * raise_by and not stats.is_proven:
                newcomer, newcomer_score = session, value
        if newcomer is not None and explore_turn % EXPLORE_EVERY == EXPLORE_EVERY - 1:
            return newcomer
        return best

    def _rows(self, model: str) -> tuple[_Row, ...]:
        rows = self._row_cache.get(model)
        if rows is None:
            rows = tuple(
                (s, s._jobs, s.registration.max_concurrent_jobs, s.stats, s.trust)
                for s in self._by_model.get(model, {}).values()
            )
            if rows:
                self._row_cache[model] = rows
        return rows

    def _members(self, model: str) -> Iterable[ProviderSession]:
        return self._by_model.get(model, {}).values()

    def routing_stats(self) -> dict[str, int | float | None]:
        """How long picks took: their count ever, and the median, 99th percentile and
        maximum (milliseconds) of the latest `ROUTING_SAMPLES` (None before any pick)."""
        window = sorted(self._pick_ns)

        def percentile(q: float) -> float | None:
            if not window:
                return None
            return window[min(len(window) - 1, math.ceil(q * len(window)) - 1)] / 1e6

        return {
            "count": self._picks,
            "p50_ms": percentile(0.50),
            "p99_ms": percentile(0.99),
            "max_ms": percentile(1.0),
        }

    def models(self) -> dict[str, list[wire.ModelCard]]:
        """Every model served right now, with the cards of the providers serving it."""
        served: dict[str, list[wire.ModelCard]] = {}
        for session in self._sessions.values():
            if not session.is_routable(self.default_floor, self.freshness_s):
                continue
            for card in session.registration.models:
                served.setdefault(card.id, []).append(card)
        return served
