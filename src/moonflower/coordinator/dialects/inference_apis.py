"""The four inference APIs the coordinator serves, each declared as one `Dialect`: OpenAI's
chat completions, legacy completions and Responses, and Anthropic's Messages.

Declarations only: each names its path, its body model, its parser, the renderer one job
gets (with what it takes from the job: the model card's fingerprint, the prompt's size, the
sampling the job runs with) and its error shape. Building routes from them is
`routes.inference`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moonflower.coordinator import sse
from moonflower.coordinator.dialects import (
    anthropic_answers,
    anthropic_errors,
    anthropic_messages,
    anthropic_render,
    openai_answers,
    openai_chat,
    openai_chat_render,
    openai_completions,
    openai_completions_render,
    openai_errors,
    openai_responses,
    openai_responses_render,
)
from moonflower.coordinator.dialects.dialect import Dialect, ErrorShape
from moonflower.coordinator.dialects.openai_responses_body import ResponsesBody
from moonflower.settings import CoordinatorSettings

if TYPE_CHECKING:
    from moonflower.coordinator.job import Job

OPENAI_ERRORS = ErrorShape(
    body=openai_errors.status_and_body, stream_event=openai_errors.stream_error_event
)
ANTHROPIC_ERRORS = ErrorShape(
    body=anthropic_errors.response_body, stream_event=anthropic_errors.stream_error_event
)


def _fingerprint(job: Job) -> str:
    return "fp_" + job.card.sha256[:12]


def _parse_chat(payload: Any, settings: CoordinatorSettings) -> openai_chat.ChatCall:
    return openai_chat.parse(payload, max_messages=settings.max_messages)


def _chat_renderer(
    call: openai_chat.ChatCall, job: Job, is_whole: bool
) -> openai_chat_render.ChatRenderer:
    return openai_chat_render.ChatRenderer(
        model=call.request.model,
        fingerprint=_fingerprint(job),
        has_logprobs=call.request.logprobs is not None,
        include_usage=call.include_usage or is_whole,
    )


CHAT = Dialect(
    name="chat_completions",
    path="/v1/chat/completions",
    summary="Create a chat completion (OpenAI)",
    body=openai_chat.ChatCompletionBody,
    answer=openai_answers.ChatCompletion,
    parse=_parse_chat,
    renderer=_chat_renderer,
    errors=OPENAI_ERRORS,
    trailer=sse.DONE,
)


def _parse_completion(
    payload: Any, _settings: CoordinatorSettings
) -> openai_completions.CompletionCall:
    return openai_completions.parse(payload)


def _completion_renderer(
    call: openai_completions.CompletionCall, job: Job, is_whole: bool
) -> openai_completions_render.CompletionRenderer:
    return openai_completions_render.CompletionRenderer(
        call, fingerprint=_fingerprint(job), include_usage=call.include_usage or is_whole
    )


COMPLETIONS = Dialect(
    name="completions",
    path="/v1/completions",
    summary="Create a text completion (OpenAI legacy)",
    body=openai_completions.CompletionBody,
    answer=openai_answers.TextCompletion,
    parse=_parse_completion,
    renderer=_completion_renderer,
    errors=OPENAI_ERRORS,
    trailer=sse.DONE,
)


def _parse_responses(payload: Any, settings: CoordinatorSettings) -> openai_responses.ResponsesCall:
    return openai_responses.parse(payload, max_messages=settings.max_messages)


def _responses_renderer(
    call: openai_responses.ResponsesCall, job: Job, _is_whole: bool
) -> openai_responses_render.ResponsesRenderer:
    return openai_responses_render.ResponsesRenderer(
        model=call.request.model,
        max_output_tokens=job.request.max_tokens,
        sampling=job.request.sampling,  # as the job runs: recommended defaults filled in
        echo=call.echo,
    )


RESPONSES = Dialect(
    name="responses",
    path="/v1/responses",
    summary="Create a model response (OpenAI Responses)",
    body=ResponsesBody,
    answer=openai_answers.Response,
    parse=_parse_responses,
    renderer=_responses_renderer,
    errors=ErrorShape(
        body=openai_errors.status_and_body,
        stream_event=openai_responses_render.stream_error_event,
    ),
    trailer=sse.DONE,
)


def _parse_messages(payload: Any, settings: CoordinatorSettings) -> anthropic_messages.MessagesCall:
    return anthropic_messages.parse(payload, max_messages=settings.max_messages)


def _message_renderer(
    call: anthropic_messages.MessagesCall, job: Job, _is_whole: bool
) -> anthropic_render.MessageRenderer:
    return anthropic_render.MessageRenderer(
        model=call.request.model, prompt_tokens=job.prompt_tokens, is_thinking=call.is_thinking
    )


MESSAGES = Dialect(
    name="create_message",
    path="/v1/messages",
    summary="Create a message (Anthropic)",
    body=anthropic_messages.MessagesBody,
    answer=anthropic_answers.Message,
    parse=_parse_messages,
    renderer=_message_renderer,
    errors=ANTHROPIC_ERRORS,
)

ALL: tuple[Dialect[Any], ...] = (CHAT, COMPLETIONS, RESPONSES, MESSAGES)
