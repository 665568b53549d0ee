"""A request's prompt tokens: the one path the provider runs and the coordinator counts by.

`PromptTokenizer` renders a request (a raw prompt, or a chat through the model's chat format
with the offered tools) to `Prompt` segments and tokenizes them over the model's vocabulary:

- markup is split at the control tokens it spells, exactly as llama.cpp does when it parses
  special tokens;
- content — everything callers wrote, and a raw completion prompt, which is the caller's own
  text too — is plain text: `<|im_start|>system` typed by a user is a few ordinary tokens, so
  nobody can forge a turn or a role;
- the text between two control tokens, markup and content alike, is tokenized as one run,
  so a prompt without control-token text in its content gets the very ids llama.cpp gives
  the whole text with special parsing on;
- BOS (and EOS) are added as the model's tokenizer asks; a BOS the template wrote itself is
  dropped first when the tokenizer adds one, so the prompt never starts with two.

Pure over its vocabulary: it loads nothing and never logs or quotes prompt text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from moonflower.errors import InvalidRequest
from moonflower.generation import GenerationRequest
from moonflower.prompting.chat_format import ChatFormat, chat_format_for
from moonflower.prompting.segments import Prompt
from moonflower.prompting.tool_prompt import offered_tools
from moonflower.prompting.vocabulary import ControlToken

_C_SPACE = " \t\n\v\f\r"
"""What llama.cpp's `isspace` strips next to a control token with LSTRIP/RSTRIP."""


class Vocabulary(Protocol):
    """What tokenizing a prompt needs from a model's vocabulary (`LlamaVocabulary`)."""

    @property
    def bos(self) -> int: ...
    @property
    def eos(self) -> int: ...
    @property
    def adds_bos(self) -> bool: ...
    @property
    def adds_eos(self) -> bool: ...
    def tokenize_text(self, text: str) -> list[int]: ...
    def partition(self, markup: str) -> Sequence[str | ControlToken]: ...
    def token_text(self, token: int) -> str: ...


class PromptTokenizer:
    """One model's prompts: its chat format over its vocabulary."""

    def __init__(self, chat_format: ChatFormat, vocabulary: Vocabulary) -> None:
        self.chat_format = chat_format
        self._vocabulary = vocabulary
        self._bos_text = vocabulary.token_text(vocabulary.bos)

    @classmethod
    def for_model(cls, vocabulary: Vocabulary, metadata: Mapping[str, str]) -> PromptTokenizer:
        """The tokenizer a GGUF's metadata (its chat template, its architecture) asks for."""
        chat_format = chat_format_for(
            metadata,
            bos_token=vocabulary.token_text(vocabulary.bos),
            eos_token=vocabulary.token_text(vocabulary.eos),
        )
        return cls(chat_format, vocabulary)

    def render(self, request: GenerationRequest) -> Prompt:
        """The prompt for `request`: its raw prompt, all content, or its chat rendered with
        the offered tools. Raises `InvalidRequest` for a chat the model cannot render."""
        if request.prompt is not None:
            return Prompt.content(request.prompt)
        if not request.messages:
            raise InvalidRequest("messages must not be empty", param="messages")
        prompt = self.chat_format.segments(request.messages, offered_tools(request))
        if self._vocabulary.adds_bos:
            prompt = prompt.without_leading_markup(self._bos_text)
        return prompt

    def tokens(self, prompt: Prompt) -> list[int]:
        """The token ids the model evaluates for `prompt`."""
        vocabulary = self._vocabulary
        tokens = [vocabulary.bos] if vocabulary.adds_bos and vocabulary.bos >= 0 else []
        for run in _runs(prompt, vocabulary):
            if isinstance(run, str):
                tokens += vocabulary.tokenize_text(run)
            else:
                tokens.append(run.id)
        if vocabulary.adds_eos and vocabulary.eos >= 0:
            tokens.append(vocabulary.eos)
        if not tokens and vocabulary.bos >= 0:
            # An empty raw prompt: start from BOS, as llama.cpp does, so there is
            # something to evaluate.
            tokens = [vocabulary.bos]
        if not tokens:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        return tokens

    def count(self, request: GenerationRequest) -> int:
        """How many tokens `request`'s prompt is."""
        return len(self.tokens(self.render(request)))


def _runs(prompt: Prompt, vocabulary: Vocabulary) -> list[str | ControlToken]:
    """`prompt` as control tokens (found in markup only) and the runs of text between them."""
    runs: list[str | ControlToken] = []
    text: list[str] = []
    strip_next = False

    def end_text() -> None:
        joined = "".join(text)
        text.clear()
        if joined:
            runs.append(joined)

    for segment in prompt.segments:
        parts = (segment.text,) if segment.is_content else vocabulary.partition(segment.text)
        for part in parts:
            if isinstance(part, str):
                if strip_next:
                    part = part.lstrip(_C_SPACE)
                    strip_next = not part
                text.append(part)
                continue
            if part.strips_left:
                text[:] = ["".join(text).rstrip(_C_SPACE)]
            end_text()
            runs.append(part)
            strip_next = part.strips_right
    end_text()
    return runs
