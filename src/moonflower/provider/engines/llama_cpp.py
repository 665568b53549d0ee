"""The llama.cpp engine: one GGUF model run in-process through llama-cpp-python.

Owns loading (context size, weight hash, model card, one llama.cpp context per slot),
turning a request into a grammar, the token-by-token generation loop (stop conditions,
cancellation, logprobs) and translating llama.cpp failures into `Failed` events. Which job
runs on which context is `context_pool`'s business; how a request becomes prompt tokens is
`moonflower.prompting`'s (the coordinator counts prompts with the same code). What the tokens
become (text, tool calls) is `output_events`' business; sampling details are `sampling`'s.
It must not import llama_cpp at module import time, and must never log prompt or completion
text or put it in an error.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from moonflower.errors import InvalidRequest, ModelSourceError
from moonflower.generation import (
    Failed,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Started,
    Usage,
)
from moonflower.model_files import ModelSource, sha256_file
from moonflower.prompting.chat_format import opens_reasoning
from moonflower.prompting.tokenizer import PromptTokenizer
from moonflower.prompting.vocabulary import LlamaVocabulary as _Vocabulary
from moonflower.provider.engines.context_pool import ContextPool
from moonflower.provider.engines.grammar import (
    CompiledGrammars,
    OutputConstraint,
    output_constraint,
)
from moonflower.provider.engines.output_events import OutputAssembler, shaper_for, stops_for
from moonflower.provider.engines.sampling import (
    LogprobReader,
    SamplerSettings,
    checked_grammar,
    recommended_sampling,
    sampler_settings,
)
from moonflower.wire import ModelCard

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

ENGINE_NAME = "llama_cpp"
DEFAULT_CONTEXT_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class _Plan:
    """A request made ready to run: its prompt, its output constraint and its grammar (None
    until the request is known to generate: counting tokens compiles none)."""

    prompt: list[int]
    starts_in_reasoning: bool
    constraint: OutputConstraint | None
    grammar: LlamaGrammar | None = None


class LlamaCppEngine:
    """One loaded GGUF model with one llama.cpp context per job it can run at once. Build it
    with `LlamaCppEngine.load`."""

    def __init__(self, contexts: Sequence[Llama], card: ModelCard, vocabulary: _Vocabulary) -> None:
        # The first context also answers model-level calls (vocabulary, metadata, grammar
        # checks): they read only weights and vocabulary, never a context's state, so any
        # thread may make them while a job generates on it.
        self._llama = contexts[0]
        # llama.cpp contexts are not re-entrant: each runs one generation at a time.
        self._contexts = ContextPool(contexts)
        self._card = card
        self._vocabulary = vocabulary
        # Compiled and checked once per schema; a grammar is only its text, shared by jobs.
        self._grammars = CompiledGrammars(lambda gbnf: checked_grammar(self._llama, gbnf))
        self._prompts = PromptTokenizer.for_model(vocabulary, self._llama.metadata)

    @classmethod
    def load(
        cls,
        source: ModelSource,
        *,
        context_length: int | None = None,
        n_threads: int | None = None,
        slots: int = 1,
        progress: Callable[[str], None] | None = None,
    ) -> LlamaCppEngine:
        """Hash and load `source` with `slots` contexts, so that many jobs run at once. Each
        context is the model's trained context, capped at `context_length` (default 8192).
        The weights are mmap'd, so every context shares their pages; each slot costs its own
        KV cache and compute buffers."""
        if context_length is not None and context_length <= 0:
            raise ValueError("context_length must be positive")
        if slots < 1:
            raise ValueError("slots must be at least 1")
        report = progress or _ignore
        size_bytes = source.path.stat().st_size
        sha256 = source.sha256
        if sha256 is None:
            report(f"hashing weights ({size_bytes / 1e6:.0f} MB)")
            sha256 = sha256_file(source.path)
        wanted = context_length or DEFAULT_CONTEXT_LENGTH
        threads = n_threads or threads_per_slot(os.cpu_count() or 1, slots)
        report(f"loading model {source.id} with llama.cpp ({slots} x {threads} threads)")
        llama = _open_llama(source, wanted, threads)
        trained = _trained_context(llama.metadata)
        if trained is not None and trained < wanted:
            # Rare (models trained on < 8k): reopen rather than run past the trained window.
            wanted = trained
            llama.close()
            llama = _open_llama(source, wanted, threads)
        contexts = [llama]
        try:
            for _ in range(slots - 1):
                contexts.append(_open_llama(source, wanted, threads))
        except BaseException:
            _close_all(contexts)
            raise
        card = ModelCard(
            id=source.id,
            sha256=sha256,
            # llama.cpp may round its context up (to a multiple of 256); the window we
            # enforce, and advertise, is the one asked for.
            context_length=min(wanted, llama.n_ctx()),
            quantization=source.quantization,
            engine=ENGINE_NAME,
            size_bytes=size_bytes,
            sampling_defaults=recommended_sampling(llama.metadata, source.sampling_defaults),
        )
        return cls(contexts, card, _Vocabulary(llama))

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def max_concurrent_jobs(self) -> int:
        return self._contexts.size

    def generate(
        self, request: GenerationRequest, cancel: threading.Event
    ) -> Iterator[GenerationEvent]:
        with self._contexts.lend(cancel) as llama:
            if llama is None:
                yield Finished(reason="cancelled", usage=Usage(0, 0))
                return
            yield from self._generate(llama, request, cancel)

    def close(self) -> None:
        self._contexts.close(lambda llama: llama.close())

    def render_prompt(self, request: GenerationRequest) -> str:
        """The exact prompt text for `request`: the raw prompt, or the rendered chat with
        the offered tools."""
        return self._prompts.render(request).text

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The prompt as the model sees it (`PromptTokenizer`: control tokens only where the
        template wrote them, BOS if the model wants it): what the coordinator counts too."""
        return self._prompts.tokens(self._prompts.render(request))

    def _plan(self, request: GenerationRequest) -> _Plan:
        """The prompt and the output constraint, not yet its grammar; raises
        `InvalidRequest`."""
        constraint = output_constraint(request)
        prompt = self._prompts.render(request)
        reasoning = request.prompt is None and opens_reasoning(prompt.text)
        return _Plan(self._prompts.tokens(prompt), reasoning, constraint)

    def _with_grammar(self, plan: _Plan) -> _Plan:
        """`plan` with its constraint's grammar, compiled once per schema and within a
        deadline; raises `InvalidRequest` (a schema too slow to compile included)."""
        if plan.constraint is None:
            return plan
        return replace(plan, grammar=self._grammars.grammar(plan.constraint))

    def _generate(
        self, llama: Llama, request: GenerationRequest, cancel: threading.Event
    ) -> Iterator[GenerationEvent]:
        param = "prompt" if request.prompt is not None else "messages"
        plan = _checked(partial(self._plan, request))
        if isinstance(plan, Failed):
            yield plan
            return
        prompt = plan.prompt
        n_ctx = self._card.context_length
        if len(prompt) >= n_ctx:
            yield Failed(
                code="context_length_exceeded",
                message=f"This model's maximum context length is {n_ctx} tokens, "
                f"but the prompt has {len(prompt)} tokens.",
                param=param,
            )
            return
        room = n_ctx - len(prompt)
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        if limit <= 0:
            # Counting tokens (max_tokens 0) must cost neither a grammar nor a prompt
            # evaluation.
            yield Started(prompt_tokens=len(prompt), starts_in_reasoning=plan.starts_in_reasoning)
            yield Finished(reason="length", usage=Usage(len(prompt), 0))
            return
        plan = _checked(partial(self._with_grammar, plan))
        if isinstance(plan, Failed):
            yield plan
            return
        yield Started(prompt_tokens=len(prompt), starts_in_reasoning=plan.starts_in_reasoning)
        yield from self._stream(llama, plan, limit, request, cancel)

    def _stream(
        self,
        llama: Llama,
        plan: _Plan,
        limit: int,
        request: GenerationRequest,
        cancel: threading.Event,
    ) -> Iterator[GenerationEvent]:
        output = OutputAssembler(
            shaper_for(request, plan.constraint), stops_for(request, plan.constraint)
        )
        generated = 0
        ended: FinishReason = "length"
        recommended = self._card.sampling_defaults
        settings = sampler_settings(
            request.sampling.filled_from(recommended.params()),
            repeat_penalty=recommended.repeat_penalty,
        )
        tokens = _start(llama, plan.prompt, settings, plan.grammar)
        try:
            logprobs = self._logprob_reader(llama, request)
            while generated < limit:
                if cancel.is_set():
                    ended = "cancelled"
                    break
                token = next(tokens, None)
                if token is None or self._vocabulary.is_end(token):
                    ended = "stop"
                    break
                generated += 1
                logprob = logprobs.read(token) if logprobs is not None else None
                yield from output.push(self._vocabulary.piece(token), logprob)
                if output.stopped is not None:
                    ended = "stop"
                    break
            closing = output.finish(complete=ended == "stop")
        except Exception as exc:
            # llama.cpp errors can quote the prompt; only the type crosses this line.
            yield Failed(code="engine_error", message=type(exc).__name__)
            return
        finally:
            tokens.close()
        yield from closing
        usage = Usage(prompt_tokens=len(plan.prompt), completion_tokens=generated)
        yield Finished(output.finish_reason(ended), usage, stop_sequence=output.stopped)

    def _logprob_reader(self, llama: Llama, request: GenerationRequest) -> LogprobReader | None:
        if request.logprobs is None:
            return None
        return LogprobReader(llama, self._vocabulary.describe, request.logprobs)


def _checked(step: Callable[[], _Plan]) -> _Plan | Failed:
    """What `step` planned, or the failure that ends the job before `Started`."""
    try:
        return step()
    except InvalidRequest as exc:
        return Failed(code="invalid_request", message=exc.message, param=exc.param)
    except Exception as exc:
        return Failed(code="engine_error", message=type(exc).__name__)


def _start(
    llama: Llama, prompt: Sequence[int], settings: SamplerSettings, grammar: LlamaGrammar | None
) -> Generator[int, Sequence[int] | None, None]:
    # Always evaluate the whole prompt: reusing a cached prefix changes the batch shapes
    # and with them the float sums, so identical requests could diverge.
    llama.reset()  # type: ignore[no-untyped-call]
    llama.set_seed(settings.seed)
    return llama.generate(
        prompt,
        temp=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        min_p=0.0,
        typical_p=1.0,
        repeat_penalty=settings.repeat_penalty,
        presence_penalty=settings.presence_penalty,
        frequency_penalty=settings.frequency_penalty,
        reset=True,
        grammar=grammar,
    )


def threads_per_slot(cpus: int, slots: int) -> int:
    """The cores shared out between the slots, at least one thread each.

    Measured on 2 cores with SmolLM2-135M (llama-cpp-python directly, 128 tokens): one
    single-threaded context makes 123 tokens/s and two at once 245 in all, while a
    two-threaded context makes 60-130 alone and two of them 57-147 in all, depending on
    OpenMP's wait policy and whatever else runs on the machine. A context's threads meet
    at a barrier at every layer, so when another context (or process) holds one of their
    cores the whole team waits; a thread per core never waits for another. More slots than
    cores run one thread each and share the cores by time."""
    return max(1, cpus // slots)


def _open_llama(source: ModelSource, n_ctx: int, n_threads: int) -> Llama:
    import llama_cpp

    try:
        # Prompt evaluation gets the same threads: llama-cpp-python would otherwise give it
        # every core in every context, and concurrent prompts would oversubscribe them.
        return llama_cpp.Llama(
            model_path=str(source.path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelSourceError(
            f"llama.cpp could not load {source.path.name} ({type(exc).__name__})"
        ) from exc


def _close_all(contexts: Sequence[Llama]) -> None:
    for llama in contexts:
        llama.close()


def _trained_context(metadata: dict[str, str]) -> int | None:
    architecture = metadata.get("general.architecture")
    value = metadata.get(f"{architecture}.context_length", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _ignore(message: str) -> None:
    """A progress callback that listens to nothing."""
