"""The llama.cpp engine: one GGUF model run in-process through llama-cpp-python.

Owns loading (context size, weight hash, model card, one llama.cpp context per slot),
turning a request into prompt tokens (tools included) and a grammar, the token-by-token
generation loop (stop conditions, cancellation, logprobs) and translating llama.cpp failures
into `Failed` events. Which job runs on which context is `context_pool`'s business. What the
tokens become (text, tool calls) is `output_events`' business; sampling details are
`sampling`'s. It must not import llama_cpp at module import time, and must never log prompt
or completion text or put it in an error.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

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
from moonflower.provider.engines.chat_format import (
    ChatFormat,
    chat_format_for,
    opens_reasoning,
    strip_leading_bos,
)
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
    sampler_settings,
)
from moonflower.provider.engines.tool_prompt import offered_tools
from moonflower.provider.models import ModelSource, sha256_file
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
        self._chat_format: ChatFormat = chat_format_for(
            self._llama.metadata,
            bos_token=vocabulary.token_text(vocabulary.bos),
            eos_token=vocabulary.token_text(vocabulary.eos),
        )

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
        if request.prompt is not None:
            return request.prompt
        if not request.messages:
            raise InvalidRequest("messages must not be empty", param="messages")
        text = self._chat_format.render(request.messages, offered_tools(request))
        if self._vocabulary.adds_bos:
            text = strip_leading_bos(text, self._vocabulary.token_text(self._vocabulary.bos))
        return text

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The prompt as the model sees it: special tokens parsed, BOS if the model wants it."""
        return self._tokens(self.render_prompt(request))

    def _tokens(self, text: str) -> list[int]:
        tokens = self._vocabulary.tokenize(text)
        if not tokens and self._vocabulary.bos >= 0:
            # An empty raw prompt: start from BOS, as llama.cpp does, so there is
            # something to evaluate.
            tokens = [self._vocabulary.bos]
        if not tokens:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        return tokens

    def _plan(self, request: GenerationRequest) -> _Plan:
        """The prompt and the output constraint, not yet its grammar; raises
        `InvalidRequest`."""
        constraint = output_constraint(request)
        text = self.render_prompt(request)
        reasoning = request.prompt is None and opens_reasoning(text)
        return _Plan(self._tokens(text), reasoning, constraint)

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
        tokens = _start(llama, plan.prompt, sampler_settings(request.sampling), plan.grammar)
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
        repeat_penalty=1.0,
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


class _Vocabulary:
    """The tokenizer calls the engine needs. Pieces come from llama.cpp's C API directly:
    llama-cpp-python's `detokenize` truncates pieces over 32 bytes (Gemma has hundreds)."""

    def __init__(self, llama: Llama) -> None:
        import llama_cpp

        self._lib: Any = llama_cpp
        self._llama = llama
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.bos = int(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self._vocab))
        self.adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def tokenize(self, text: str) -> list[int]:
        # special=True as llama.cpp's server does: templates write control tokens as text.
        return self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def is_end(self, token: int) -> bool:
        """End of generation: EOS, EOT, <end_of_turn> and the like."""
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def piece(self, token: int, *, special: bool = False) -> bytes:
        size = 64
        buffer = ctypes.create_string_buffer(size)
        written = int(self._lib.llama_token_to_piece(self._vocab, token, buffer, size, 0, special))
        if written < 0:
            size = -written
            buffer = ctypes.create_string_buffer(size)
            written = int(
                self._lib.llama_token_to_piece(self._vocab, token, buffer, size, 0, special)
            )
        return buffer.raw[: max(written, 0)]

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def describe(self, token: int) -> str:
        """A token's text for logprobs (a piece that is part of a character shows as U+FFFD)."""
        return self.piece(token).decode("utf-8", errors="replace")


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
