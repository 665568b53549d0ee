"""A GGUF model's vocabulary through llama.cpp: text to token ids, control tokens, pieces.

Owns the calls into llama.cpp's tokenizer API. It works on any `Llama`, including one opened
with `vocab_only=True` (no weights: what the coordinator loads to count prompts). Text is
tokenized here without special-token parsing; control tokens are found only in markup
(`partition`), the way llama.cpp finds them when it parses specials. Pieces come from the C
API directly: llama-cpp-python's `detokenize` truncates pieces over 32 bytes (Gemma has
hundreds).

It imports llama_cpp only when built, never logs text, and puts no text in an error.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama_cpp import Llama

PARTITIONS_KEPT = 4096
"""How many distinct markup strings keep their partition (templates repeat a few)."""


@dataclass(frozen=True, slots=True)
class ControlToken:
    """A token that text spells only where special tokens are parsed (`<|im_start|>`)."""

    id: int
    text: str
    strips_left: bool = False
    """Whitespace just before it is dropped (llama.cpp's LSTRIP attribute)."""
    strips_right: bool = False
    """Whitespace just after it is dropped (RSTRIP)."""


class LlamaVocabulary:
    """The tokenizer calls prompt building and generation need, for one loaded model."""

    def __init__(self, llama: Llama) -> None:
        import llama_cpp

        self._lib: Any = llama_cpp
        self._llama = llama  # the vocabulary lives as long as this model does
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.bos = int(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self._vocab))
        self.adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.adds_eos = bool(llama_cpp.llama_vocab_get_add_eos(self._vocab))
        self._controls = self._control_tokens()
        self.partition = functools.lru_cache(maxsize=PARTITIONS_KEPT)(self._partition)

    def tokenize_text(self, text: str) -> list[int]:
        """`text` as plain text: control tokens are not parsed, no BOS or EOS is added."""
        data = text.encode("utf-8")
        capacity = len(data) + 2
        for _ in range(2):
            buffer = (self._lib.llama_token * capacity)()
            # add_special=False, parse_special=False: no BOS/EOS, no control tokens.
            count = int(
                self._lib.llama_tokenize(
                    self._vocab, data, len(data), buffer, capacity, False, False
                )
            )
            if count >= 0:
                return list(buffer[:count])
            capacity = -count
        raise RuntimeError("llama.cpp could not tokenize the prompt")

    def _partition(self, markup: str) -> tuple[str | ControlToken, ...]:
        """`markup` split as llama.cpp splits text when it parses special tokens: each
        control token it spells (the longest first, every occurrence from the left) and the
        text in between."""
        parts: list[str | ControlToken] = [markup]
        for token in self._controls:
            if token.text not in markup:
                continue
            split: list[str | ControlToken] = []
            for part in parts:
                if isinstance(part, ControlToken):
                    split.append(part)
                    continue
                for index, text in enumerate(part.split(token.text)):
                    if index:
                        split.append(token)
                    if text:
                        split.append(text)
            parts = split
        return tuple(parts)

    def _control_tokens(self) -> tuple[ControlToken, ...]:
        """Every token parsed only with special parsing on (control and unknown tokens),
        longest text first as llama.cpp tries them. User-defined tokens are left to the
        tokenizer: llama.cpp matches those in plain text too."""
        lib = self._lib
        needs_parsing = lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_UNKNOWN
        found: list[tuple[int, ControlToken]] = []
        for token in range(int(lib.llama_vocab_n_tokens(self._vocab))):
            attributes = int(lib.llama_vocab_get_attr(self._vocab, token))
            if not attributes & needs_parsing:
                continue
            raw = lib.llama_vocab_get_text(self._vocab, token) or b""
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue  # no str can spell it
            if text:
                control = ControlToken(
                    token,
                    text,
                    strips_left=bool(attributes & lib.LLAMA_TOKEN_ATTR_LSTRIP),
                    strips_right=bool(attributes & lib.LLAMA_TOKEN_ATTR_RSTRIP),
                )
                found.append((len(raw), control))
        found.sort(key=lambda entry: entry[0], reverse=True)
        return tuple(control for _, control in found)

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
