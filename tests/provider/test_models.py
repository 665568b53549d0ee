"""Model specs resolve to real weight files, and weights hash as streamed SHA-256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from moonflower import model_files
from moonflower.errors import ModelSourceError
from moonflower.model_files import (
    ModelSource,
    quantization_from_name,
    resolve_model,
    sha256_file,
)


def test_default_is_the_smollm2_gguf_shipped_in_its_package() -> None:
    source = resolve_model("default")
    assert source.id == "smollm2-135m-instruct"
    assert source.quantization == "Q4_1"
    assert source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.path.is_file()
    assert source.path.read_bytes()[:4] == b"GGUF"


def test_gemma_is_assembled_from_its_packages() -> None:
    source = resolve_model("gemma3-270m")
    assert (source.id, source.quantization) == ("gemma-3-270m", "Q4_K_M")
    with source.path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


def test_a_gguf_path_is_served_under_its_lowercased_stem(tmp_path: Path) -> None:
    weights = tmp_path / "My-Model-7B.Q4_K_M.gguf"
    weights.write_bytes(b"GGUF")
    assert resolve_model(str(weights)) == ModelSource(
        id="my-model-7b.q4_k_m", path=weights, quantization="Q4_K_M"
    )


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelSourceError, match="No model file at") as caught:
        resolve_model(str(missing))
    assert str(missing) in caught.value.message


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelSourceError, match=r"not a \.gguf file"):
        resolve_model(str(other))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("gemma-3-270m-q4_k_m.gguf", "Q4_K_M"),
        ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
        ("qwen2.5-0.5b-instruct-q8_0.gguf", "Q8_0"),
        ("phi-3-mini.f16.gguf", "F16"),
        ("model-BF16.gguf", "BF16"),
        ("plain-model.gguf", None),
        ("mistral-7b-instruct-v0.2.Q5_K_S.gguf", "Q5_K_S"),
    ],
)
def test_quantization_is_read_from_the_file_name(name: str, expected: str | None) -> None:
    assert quantization_from_name(name) == expected


def test_sha256_streams_the_whole_file_and_reports_progress(tmp_path: Path) -> None:
    data = bytes(range(256)) * (10 * 1024 + 7)  # ~2.5 MiB: several 1 MiB chunks
    path = tmp_path / "weights.gguf"
    path.write_bytes(data)
    messages: list[str] = []
    assert sha256_file(path, messages.append) == hashlib.sha256(data).hexdigest()
    assert messages
    assert messages[-1].endswith("100%")


def test_sha256_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    assert sha256_file(path) == hashlib.sha256(b"").hexdigest()


def test_weight_hash_is_computed_once_per_file_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "tiny-Q8_0.gguf"
    weights.write_bytes(b"GGUF" + bytes(range(256)) * 100)
    source = model_files.resolve_model(str(weights))
    data_dir = tmp_path / "data"

    first = model_files.with_weight_hash(source, data_dir)
    assert first.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (data_dir / "weight-hashes.json").is_file()

    def must_not_hash(*_args: object, **_kwargs: object) -> str:
        raise AssertionError("the remembered hash should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(model_files, "sha256_file", must_not_hash)
        assert model_files.with_weight_hash(source, data_dir).sha256 == first.sha256

    weights.write_bytes(b"GGUF changed")
    os.utime(weights, ns=(1, 1))
    changed = model_files.with_weight_hash(source, data_dir)
    assert changed.sha256 == hashlib.sha256(b"GGUF changed").hexdigest()
