"""Inference engines, and `load_engine`, the one place an engine is chosen by name.

Each engine lives in its own module and imports its heavy library (llama_cpp, mlx_lm) only
when a model is loaded, so importing this package costs nothing and works on machines that
have only some engines installed. This module must not import any engine at import time.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from moonflower.errors import EngineUnavailable
from moonflower.model_files import ModelSource
from moonflower.provider.engines.base import Engine

ENGINE_NAMES = ("llama_cpp", "mlx")
_MLX_MODULE = "moonflower.provider.engines.mlx"


def load_engine(
    name: str,
    source: ModelSource,
    *,
    context_length: int | None = None,
    slots: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Engine:
    """Load `source` on the engine called `name` ("llama_cpp" or "mlx"). `slots` is how many
    jobs llama.cpp runs at once (a context each); MLX decides its own concurrency."""
    if name == "llama_cpp":
        _require(
            "llama_cpp", "the llama_cpp engine needs llama-cpp-python: install moonflower[llamacpp]"
        )
        from moonflower.provider.engines.llama_cpp import LlamaCppEngine

        return LlamaCppEngine.load(
            source, context_length=context_length, slots=slots, progress=progress
        )
    if name == "mlx":
        _require(
            "mlx_lm",
            "the mlx engine needs mlx-lm, which runs only on Apple Silicon "
            "macOS: install moonflower[mlx] there, or use the llama_cpp engine",
        )
        try:
            module = importlib.import_module(_MLX_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name != _MLX_MODULE:
                raise
            raise EngineUnavailable("the mlx engine is not part of this build") from None
        engine: Engine = module.MlxEngine.load(
            source, context_length=context_length, progress=progress
        )
        return engine
    raise EngineUnavailable(f"unknown engine {name!r}; choose one of: {', '.join(ENGINE_NAMES)}")


def _require(module: str, message: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise EngineUnavailable(message)
