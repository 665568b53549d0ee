"""How the llama.cpp engine samples: settings with their defaults, grammars, and logprobs.

Owns the model's recommended sampling (read from the weight file's `general.sampling.*`
metadata, else the bundled model's known values), filling `SamplingParams` defaults in
llama.cpp's terms, checking a GBNF grammar against
the model's vocabulary before it reaches llama.cpp's sampler chain (which does not check, and
would crash on a grammar that failed to parse), and reading log-probabilities from the logits
llama.cpp computed for the position just sampled. Must not import llama_cpp at module import
time, and never sees or logs text other than token pieces it is asked to describe.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from moonflower.generation import SamplingParams, TokenLogprob
from moonflower.wire import SamplingDefaults

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

# llama.cpp reads seed 0xFFFFFFFF as "pick one at random", so given seeds are folded below it.
_SEED_MODULUS = 0xFFFFFFFF
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class SamplerSettings:
    """`SamplingParams` with every default filled in, in llama.cpp's terms."""

    temperature: float
    top_p: float
    top_k: int
    seed: int
    presence_penalty: float
    frequency_penalty: float
    repeat_penalty: float


def recommended_sampling(metadata: Mapping[str, str], known: SamplingDefaults) -> SamplingDefaults:
    """The sampling the model's authors recommend: what the GGUF file says
    (`general.sampling.temp`, `.top_p`, `.top_k`, `.penalty_repeat`; llama.cpp's keys), else
    `known` (values published beside the weights, or measured, for files that do not carry
    them), knob by knob. A value out of range is ignored rather than trusted."""
    found: dict[str, float | int | None] = {
        "temperature": _number(metadata.get("general.sampling.temp")),
        "top_p": _number(metadata.get("general.sampling.top_p")),
        "top_k": _whole(metadata.get("general.sampling.top_k")),
        "repeat_penalty": _number(metadata.get("general.sampling.penalty_repeat")),
    }
    merged = {
        knob: found[knob] if found[knob] is not None else value
        for knob, value in known.model_dump().items()
    }
    try:
        return SamplingDefaults.model_validate(merged)
    except ValidationError:
        return known


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _whole(text: str | None) -> int | None:
    value = _number(text)
    # llama.cpp writes top_k <= 0 for "off"
    return int(value) if value is not None and value >= 1 and value.is_integer() else None


def sampler_settings(params: SamplingParams, *, repeat_penalty: float | None) -> SamplerSettings:
    """Defaults: temperature 1, top_p 1, top_k off (0), no penalties, a random seed.
    Temperature 0 means greedy decoding. `repeat_penalty` is the model's own (no request
    sets it) and applies to sampled decoding only: greedy decoding stays the model's most
    likely answer, as llama.cpp gives it."""
    seed = secrets.randbelow(_SEED_MODULUS) if params.seed is None else params.seed % _SEED_MODULUS
    top_p = 1.0 if params.top_p is None else params.top_p
    temperature = max(0.0, 1.0 if params.temperature is None else params.temperature)
    return SamplerSettings(
        temperature=temperature,
        top_p=min(1.0, max(0.0, top_p)),
        top_k=max(0, params.top_k or 0),
        seed=seed,
        presence_penalty=params.presence_penalty or 0.0,
        frequency_penalty=params.frequency_penalty or 0.0,
        repeat_penalty=(repeat_penalty or 1.0) if temperature > 0 else 1.0,
    )


def checked_grammar(llama: Llama, gbnf: str) -> LlamaGrammar | None:
    """`gbnf` as a grammar llama.cpp's sampler accepts for this model, or None when llama.cpp
    cannot parse it."""
    import llama_cpp
    from llama_cpp import llama_grammar

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    probe = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not probe:
        return None
    llama_cpp.llama_sampler_free(probe)
    return llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)


class LogprobReader:
    """Log-probabilities of sampled tokens, from llama.cpp's logits for the last position.

    Call `read` right after a token is sampled and before the next evaluation: the context
    still holds the logits it was sampled from. The values are the model's own distribution
    (a log-softmax of the raw logits), before temperature, penalties or a grammar: what the
    model thought, not what the sampler was allowed to pick. Up to `top` alternatives
    (capped at 20) come with each token, most likely first.
    """

    def __init__(self, llama: Llama, describe: Callable[[int], str], top: int) -> None:
        import llama_cpp
        import numpy

        self._lib: Any = llama_cpp
        self._numpy: Any = numpy
        self._context = llama.ctx
        self._n_vocab = llama.n_vocab()
        self._describe = describe
        self._top = max(0, min(top, MAX_TOP_LOGPROBS))

    def read(self, token: int) -> TokenLogprob:
        np = self._numpy
        pointer = self._lib.llama_get_logits_ith(self._context, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).astype(np.float64)
        peak = logits.max()
        logprobs = logits - (peak + np.log(np.exp(logits - peak).sum()))
        top: tuple[tuple[str, float], ...] = ()
        if self._top:
            best = np.argpartition(-logprobs, self._top - 1)[: self._top]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            top = tuple((self._describe(int(t)), min(0.0, float(logprobs[t]))) for t in best)
        # A log-softmax is never above 0; min() only guards the sign of a rounded zero.
        return TokenLogprob(self._describe(token), min(0.0, float(logprobs[token])), top)
