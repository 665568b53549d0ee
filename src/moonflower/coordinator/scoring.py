"""Provider scoring: what the coordinator measured about each provider, and how those
measurements rank the providers that may take the next job.

`ProviderStats` lives on one `ProviderSession`, so it lasts one connection: a provider that
reconnects starts again from the priors (nothing it did on another connection carries over,
as with trust). The dispatcher reports each job to it; it keeps exponentially weighted
decode speed and time to first token, and the outcomes of the last `RELIABILITY_WINDOW`
jobs. Values the coordinator has not measured yet are neutral priors — a middling machine —
so a newcomer is neither favoured nor starved; `Registry.pick` also gives providers with
too few jobs to judge a bounded share of picks so they get measured at all.

`score` is a pure function of a few numbers (O(1), deterministic, no clock, no I/O). Higher
is better; it reads as "successful reference answers per second this provider would give a
new job", weighted by trust:

    score = trust_weight * reliability / (expected_s * (1 + load) + cold_start_s)

    expected_s  = ttft_s + REFERENCE_COMPLETION_TOKENS / decode_tps   (an idle provider)
    load        = active jobs / slots, in [0, 1) for any provider with a free slot
    reliability = success rate over recent jobs, with a prior worth a few jobs; dividing by
                  it counts the retries a failing provider costs
    cold_start  = added when the model would have to be loaded first

This module must not reach into sessions, the registry or the network.
"""

from __future__ import annotations

import math

from moonflower.coordinator.trust import TrustLevel

REFERENCE_COMPLETION_TOKENS = 256
"""The answer length speed and first-token latency are traded against: against a provider
decoding at 100 tok/s, one that starts 1 s later must decode at 164 tok/s to be as good."""
PRIOR_DECODE_TPS = 50.0
"""Decode speed assumed before a provider finished a job: a middling machine (the bundled
135M model runs at ~100 tok/s on two cores; 7B models at ~20–90 tok/s on Apple silicon)."""
PRIOR_TTFT_S = 0.5
EWMA_WEIGHT = 0.2
"""Weight of the newest measurement: the estimates follow roughly the last ten jobs."""
MIN_SPEED_TOKENS = 4
"""Jobs shorter than this say little about decode speed (timer noise dominates)."""
MAX_DECODE_TPS = 5000.0
MAX_TTFT_S = 600.0
RELIABILITY_WINDOW = 20
_WINDOW_MASK = (1 << RELIABILITY_WINDOW) - 1
PRIOR_SUCCESSES = 4.5
PRIOR_FAILURES = 0.5
"""Reliability prior: 90 %, worth five jobs — one early failure hurts, but does not sink a
newcomer, and a long record outweighs the prior."""
PROVEN_AFTER_JOBS = 3
"""A provider with fewer ended jobs than this is still a newcomer (see `is_proven`)."""
LOAD_WEIGHT = 1.0
"""A provider with half its slots busy is expected to take 1.5 times as long."""
COLD_START_S = 20.0
"""What loading a model before the first token is assumed to cost."""
TRUST_WEIGHT: tuple[float, ...] = (0.5, 0.8, 1.0)
"""By `TrustLevel` value (none, self_signed, hardware): above the floor a request asked
for, better-proven machines are preferred, unless another is much faster."""


class ProviderStats:
    """Measured behaviour of one provider connection. Every method is O(1)."""

    __slots__ = (
        "_recent",
        "_recent_count",
        "decode_tps",
        "expected_s",
        "jobs_ended",
        "reliability",
        "ttft_s",
    )

    def __init__(self) -> None:
        self.decode_tps: float | None = None
        """Decode speed (tokens/s, weighted towards recent jobs); None until measured."""
        self.ttft_s: float | None = None
        """Time to first token (s, weighted towards recent jobs); None until measured."""
        self.jobs_ended = 0
        """Jobs reported finished or failed, ever, on this connection."""
        # The last RELIABILITY_WINDOW outcomes as bits, newest lowest (1: success): a
        # thousand providers' windows cost a thousand small ints.
        self._recent = 0
        self._recent_count = 0
        # Derived values, kept current by every report so scoring does no work twice.
        self.expected_s = _expected_s(None, None)
        self.reliability = _reliability(0, 0)

    def job_started(self, ttft_s: float) -> None:
        """The job's first token arrived `ttft_s` seconds after it was sent."""
        if not math.isfinite(ttft_s):
            return
        sample = min(max(ttft_s, 0.0), MAX_TTFT_S)
        self.ttft_s = _ewma(self.ttft_s, sample)
        self.expected_s = _expected_s(self.decode_tps, self.ttft_s)

    def job_finished(self, completion_tokens: int, decode_s: float) -> None:
        """The job ended well, generating `completion_tokens` in `decode_s` seconds after
        its first token."""
        if completion_tokens >= MIN_SPEED_TOKENS and 0 < decode_s < math.inf:
            sample = min(completion_tokens / decode_s, MAX_DECODE_TPS)
            self.decode_tps = _ewma(self.decode_tps, sample)
            self.expected_s = _expected_s(self.decode_tps, self.ttft_s)
        self._record(success=True)

    def job_failed(self) -> None:
        """The job failed on the provider's side (it broke off, timed out, lied)."""
        self._record(success=False)

    @property
    def is_proven(self) -> bool:
        """Enough jobs ended to judge this provider on its own record."""
        return self.jobs_ended >= PROVEN_AFTER_JOBS

    def _record(self, *, success: bool) -> None:
        self._recent = ((self._recent << 1) | success) & _WINDOW_MASK
        self._recent_count = min(self._recent_count + 1, RELIABILITY_WINDOW)
        self.jobs_ended += 1
        self.reliability = _reliability(self._recent.bit_count(), self._recent_count)

    def __repr__(self) -> str:
        return (
            f"ProviderStats(decode_tps={self.decode_tps}, ttft_s={self.ttft_s}, "
            f"reliability={self.reliability:.3f}, jobs_ended={self.jobs_ended})"
        )


def score(stats: ProviderStats, *, trust: TrustLevel, load: float, is_loaded: bool = True) -> float:
    """How good a choice this provider is for the next job (higher is better, always > 0)."""
    busy_s = stats.expected_s * (1.0 + LOAD_WEIGHT * load)
    if not is_loaded:
        busy_s += COLD_START_S
    return TRUST_WEIGHT[trust] * stats.reliability / busy_s


def _ewma(current: float | None, sample: float) -> float:
    return sample if current is None else current + EWMA_WEIGHT * (sample - current)


def _expected_s(decode_tps: float | None, ttft_s: float | None) -> float:
    tps = PRIOR_DECODE_TPS if decode_tps is None else max(decode_tps, 1e-3)
    ttft = PRIOR_TTFT_S if ttft_s is None else ttft_s
    return ttft + REFERENCE_COMPLETION_TOKENS / tps


def _reliability(successes: int, jobs: int) -> float:
    return (successes + PRIOR_SUCCESSES) / (jobs + PRIOR_SUCCESSES + PRIOR_FAILURES)
