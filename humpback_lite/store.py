"""Checkpoints as data: atomic files, resumable JSONL, and a run folder with a manifest.

No model code here. A run is a directory::

    RUN/recipe.yaml            the resolved recipe
    RUN/manifest.json          one entry per stage: fingerprint, status, counts, times
    RUN/<stage>/...            one folder per stage (round stages live under round_NN/)

A stage is done when the manifest says so *and* its fingerprint (a hash of its settings and of
its inputs' output digests, see graph.py) is unchanged; a changed fingerprint wipes that stage.
A finished stage records the digest of the files it wrote, which is what its readers hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import Counts


class DataError(ValueError):
    """An input file is malformed; the message names the file and line."""


# ----------------------------------------------------------------------------- atomic files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync and rename it over `path`.
    On any error the temp file is removed and `path` is untouched (e.g. a full disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file is what users expect
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy `src` to `dst` atomically (a temp file, fsync, rename): a kill or a full disk leaves the
    old `dst` or none, never half of one."""
    with atomic_path(dst, suffix=Path(dst).suffix) as tmp:
        shutil.copyfile(src, tmp)


def copy_tree(src: str | Path, dst: str | Path) -> None:
    """Copy every file under `src` into `dst`, each with `copy_file`."""
    for f in sorted(Path(src).rglob("*")):
        if f.is_file():
            copy_file(f, Path(dst) / f.relative_to(src))


# What atomic_path, atomic_dir and scratch_dir leave when the process is killed: a dot, the
# target's name, mkstemp's 8 random characters, and the temp suffix (".tmp", ".gguf", ...) if any.
def _temp_name(target: str = ".+") -> re.Pattern[str]:
    return re.compile(rf"^\.{target}\.[a-z0-9_]{{8}}(\.[A-Za-z0-9]+)?$")


_ATOMIC_TEMP = _temp_name()


def _remove(paths: Iterable[Path], pattern: re.Pattern[str]) -> int:
    n = 0
    for p in paths:
        if pattern.match(p.name) and p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            n += 1
    return n


def remove_stale_temps(folder: str | Path) -> int:
    """Delete what killed atomic writes left in `folder` (a stage resumed after a kill); the number
    removed. Only names of that form: a user's or the trainer's own dot-files stay."""
    return _remove(sorted(Path(folder).rglob(".*"), key=lambda p: len(p.parts), reverse=True), _ATOMIC_TEMP)


def remove_stale_temps_of(target: str | Path) -> int:
    """Delete the temps killed atomic writes of `target` left beside it (a command rerun into a
    folder the user named, where `remove_stale_temps` would reach the user's other files)."""
    target = Path(target)
    beside = target.parent.glob(".*") if target.parent.is_dir() else ()
    return _remove(beside, _temp_name(re.escape(target.name)))


@contextlib.contextmanager
def scratch_dir(target: str | Path) -> Iterator[Path]:
    """A working folder beside `target` under an atomic temp's name: removed on the way out, or,
    after a SIGKILL, by the resumed stage or rerun command (`remove_stale_temps`, `_of`), where one
    in /tmp or under a plain name beside the output would stay for good."""
    tmp = _mkdtemp_beside(Path(target))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dumps(obj: Any, **kw: Any) -> str:
    """JSON as readable UTF-8; a string that UTF-8 cannot hold (a file name that is not UTF-8,
    decoded by Python with lone surrogates) is written as \\udcXX escapes instead of failing."""
    text = json.dumps(obj, ensure_ascii=False, **kw)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, **kw)
    return text


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            n += 1
    return n


@contextlib.contextmanager
def atomic_dir(path: str | Path, owned: Collection[str] | None = None) -> Iterator[Path]:
    """Build a directory under a temp name, then rename it into place, replacing an old one. With
    `owned` (a folder the user named), the old one is replaced only if it holds nothing but those
    names and what the new one holds (`check_owned`): `-o ~/models` must not delete ~/models."""
    path = Path(path)
    if owned is not None:
        check_owned(path, owned)
    tmp = _mkdtemp_beside(path)
    try:
        yield tmp
        if owned is not None:
            check_owned(path, set(owned) | {p.name for p in tmp.iterdir()})
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _mkdtemp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))


def check_owned(path: str | Path, owned: Collection[str]) -> None:
    """Refuse (DataError, nothing changed) when `path` is a file, or a folder with entries other
    than `owned`: those are the user's, and replacing the folder would delete them."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise DataError(f"{path} is a file, not a folder; nothing was changed: choose a new or empty folder")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in owned)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise DataError(f"{path} already holds files this command did not write ({', '.join(foreign[:5])}{more}); "
                        "nothing was changed: choose a new or empty folder")


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line or a missing field is a DataError naming file:line."""
    path = Path(path)
    required = list(required)
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise DataError(f"{path}:{i}: missing or empty field(s): {', '.join(missing)}")
        rows.append(row)
    return rows


class JsonlAppender:
    """Append records one per line, fsynced, so a killed process loses at most the line it was
    writing. Opening an existing file drops a torn last line and reports what is already there."""

    def __init__(self, path: str | Path, fsync_every: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: list[dict[str, Any]] = self._recover()
        self._f = open(self.path, "a", encoding="utf-8")
        self._fsync_every = fsync_every
        self._pending = 0

    def _recover(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]  # a torn last line has no newline yet
        rows = []
        good = 0
        for line in keep.splitlines(keepends=True):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line)
        if good != len(data):
            with open(self.path, "rb+") as f:
                f.truncate(good)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        self._f.write(dumps(row) + "\n")
        self._pending += 1
        if self._pending >= self._fsync_every:
            self.flush()

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._pending = 0

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resume_jsonl(path: str | Path, items: Iterable[Any], key: Callable[[Any], Any], work: Callable[[Any], dict | None],
                 on_item: Callable[[], None] | None = None,
                 record_key: Callable[[dict], Any] | None = None) -> tuple[int, int]:
    """Append `work(item)` to the JSONL file `path` for every item whose `key(item)` has no record
    there yet (records matched by `record_key`, default `key`), one fsynced line each: a killed
    process resumes after the last complete line. `work` may return None to write nothing.
    Returns (records already there, records written now)."""
    return resume_jsonl_windows(path, items, key, lambda chunk, emit: emit(chunk[0], work(chunk[0])), window=1,
                                on_item=on_item, record_key=record_key)


def resume_window(parallel: int) -> int:
    """Items per resume window of a batched stage: one at a time runs alone; batched, several
    batches' worth, so the work a kill costs stays small while batches stay full."""
    return 1 if parallel == 1 else 4 * parallel


def resume_jsonl_windows(path: str | Path, items: Iterable[Any], key: Callable[[Any], Any],
                         work: Callable[[list[Any], Callable[[Any, dict | None], None]], None] | None, window: int,
                         on_item: Callable[[], None] | None = None,
                         record_key: Callable[[dict], Any] | None = None, pool: Any = None) -> tuple[int, int]:
    """`resume_jsonl` for batched work: `work(chunk, emit)` handles `window` consecutive items at
    once and calls `emit(item, record)` as each finishes, in any order; each record is appended
    (fsynced) when emitted. A window with a record missing is worked whole again and only its
    missing records are written: batched kernels may round differently with the batch's shape, so
    a resumed run must repeat the uninterrupted run's batches to write the same bytes.
    With `pool` (cluster.RayPool), the windows to work are handed to `pool.map`, which yields each
    window's (item, record) list in window order, and `work` is not called.
    Returns (records already there, records written now)."""
    match = record_key or key
    items = list(items)
    with JsonlAppender(path) as out:
        done = {match(r) for r in out.done}
        before, new = len(done), 0

        def emit(item: Any, rec: dict | None) -> None:
            nonlocal new
            if key(item) in done:
                return  # done before the kill; recomputed only to repeat its batch
            done.add(key(item))
            if rec is not None:
                out.append(rec)
                new += 1
            if on_item:
                on_item()

        pending = []
        for start in range(0, len(items), window):
            chunk = items[start: start + window]
            missing = sum(1 for it in chunk if key(it) not in done)
            for _ in range(len(chunk) - missing):
                if on_item:
                    on_item()
            if missing and pool is None:
                work(chunk, emit)  # type: ignore[misc]  (no pool: work is given)
            elif missing:
                pending.append(chunk)
        for results in pool.map(pending) if pending else ():
            for item, rec in results:
                emit(item, rec)
    return before, new


# ----------------------------------------------------------------------------- fingerprints


def fingerprint(*parts: Any) -> str:
    blob = dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: str | Path, cache: Path | None = None, hidden: bool = True) -> str:
    """The identity of a file or folder tree by content (`hidden=False` leaves out dot-files and
    dot-folders: temp files). With `cache` (a JSON index), files whose size and mtime are unchanged
    are not read again: a large corpus costs a stat per file per command, not a full read."""
    root = Path(root)
    files = sorted(f for f in root.rglob("*") if f.is_file() and (
        hidden or not any(part.startswith(".") for part in f.relative_to(root).parts))) if root.is_dir() else [root]
    try:
        index = read_json(cache) if cache is not None and cache.exists() else {}
    except (OSError, ValueError):
        index = {}  # a damaged cache is only a cache
    fresh, parts = {}, []
    for f in files:
        st = f.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        hit = index.get(str(f))
        digest = hit[2] if hit and hit[:2] == stamp else file_digest(f)
        fresh[str(f)] = [*stamp, digest]
        parts.append((str(f.relative_to(root)) if root.is_dir() else root.name, digest))
    if cache is not None and fresh != index:
        with contextlib.suppress(OSError):  # a read-only cache folder costs speed, not correctness
            write_json(cache, fresh)
    return fingerprint(parts)


# ----------------------------------------------------------------------------- the run folder


def inputs_path(path: str | Path) -> Path:
    """The hidden record, beside a stand-alone command's output, of what it was written from."""
    path = Path(path)
    return path.with_name(f".{path.name}.inputs.json")


def claim_output(path: str | Path, identity: dict[str, Any], command: str) -> None:
    """Let a stand-alone command append to `path` (resuming it) only if the same inputs wrote it.

    A rerun with another input, adapter or setting would otherwise keep the old records under the
    same ids and write nothing, and a file the command did not write would be appended to; both are
    refused with what differs, and nothing is changed. `identity` is JSON data (digests, settings)."""
    path, side = Path(path), inputs_path(path)
    if side.exists():
        old = read_json(side).get("identity", {})
        changed = sorted(k for k in set(identity) | set(old) if old.get(k) != identity.get(k))
        if not changed:
            return
        raise DataError(f"{path} was written from other inputs ({', '.join(changed)} differ); nothing was changed: "
                        f"delete it and {side.name} to start over, or give another output path")
    if path.exists() and path.stat().st_size > 0:
        raise DataError(f"{path} exists and was not written by `humpback {command}` (no {side.name} beside it); "
                        f"nothing was changed: give another output path")
    write_json(side, {"command": command, "identity": identity})


def unique_ids(rows: list[dict[str, Any]], source: str | Path) -> None:
    """Records are resumed and joined by `id`: a repeated one (two files concatenated) would be
    skipped as already done, so it is an error naming both lines."""
    seen: dict[str, int] = {}
    for i, r in enumerate(rows, 1):
        rid = r.get("id")
        if rid in seen:
            raise DataError(f"{source}: record {i} repeats the id {rid!r} of record {seen[rid]}; ids must be unique "
                            f"(records are resumed and matched by id): renumber or drop the field")
        seen[rid] = i


class RunBusy(RuntimeError):
    """Another process is running this folder; the message names it."""


class RunLock:
    """One process per run folder: an exclusive `flock` on RUN/.lock, held while the loop runs.
    The kernel drops it when the process ends however it ends, so a crash leaves no stale lock."""

    NAME = ".lock"

    def __init__(self, root: str | Path):
        self.path = Path(root) / self.NAME
        self._f = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one run per folder is then the user's to keep
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115  (held until __exit__)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunBusy(f"{self.path.parent} is in use by {holder}; wait for it to finish or stop it, "
                          "then rerun to resume") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} ({_cmdline(os.getpid())})\n")
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()  # closing releases the flock
            self._f = None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "humpback"


@dataclass
class StageInfo:
    name: str
    fingerprint: str
    status: str  # "running" | "done"
    started: float
    finished: float | None = None
    seconds: float | None = None
    counts: dict[str, Any] | None = None
    output: str | None = None  # digest of the files the stage wrote


class Run:
    """A run directory and its manifest. Stages are addressed by relative path names such as
    `corpus`, `backward`, `round_01/score`."""

    MANIFEST = "manifest.json"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / self.MANIFEST
        self.manifest: dict[str, Any] = read_json(path) if path.exists() else {"stages": {}}

    @classmethod
    def existing(cls, root: str | Path) -> Run:
        """A run folder that must already be one (status, report): anything else is an error,
        not an empty table or a report/ folder written into the user's directory."""
        if not (Path(root) / cls.MANIFEST).is_file():
            raise DataError(f"{root} is not a run folder (no {cls.MANIFEST}); start one with `humpback run RECIPE`")
        return cls(root)

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def info(self, stage: str) -> StageInfo | None:
        rec = self.manifest["stages"].get(stage)
        return StageInfo(name=stage, **rec) if rec else None

    def is_done(self, stage: str, fp: str) -> bool:
        info = self.info(stage)
        return bool(info and info.status == "done" and info.fingerprint == fp and self.dir(stage).exists())

    def begin(self, stage: str, fp: str) -> Path:
        """Mark a stage running. A stage whose fingerprint changed starts from an empty folder;
        one interrupted with the same fingerprint keeps its partial files so it can resume."""
        info = self.info(stage)
        d = self.dir(stage)
        if info is None and d.exists() and any(d.iterdir()):
            # not ours: the manifest records every stage folder before anything is written into it
            raise DataError(f"{d} exists and is not a stage of this run (its manifest does not list it); "
                            f"nothing was deleted: move it away, or give the run another --out folder")
        if info is not None and info.fingerprint != fp and d.exists():
            shutil.rmtree(d)
        elif d.exists():
            remove_stale_temps(d)  # an interrupted stage keeps its records, not half-written files
        d.mkdir(parents=True, exist_ok=True)
        self.manifest["stages"][stage] = {"fingerprint": fp, "status": "running", "started": time.time()}
        self._save()
        return d

    def finish(self, stage: str, counts: Counts | dict[str, Any] | None = None) -> None:
        rec = self.manifest["stages"][stage]
        rec["status"] = "done"
        rec["finished"] = time.time()
        rec["seconds"] = round(rec["finished"] - rec["started"], 2)
        rec["counts"] = counts.to_json() if isinstance(counts, Counts) else (counts or {})
        rec["output"] = tree_digest(self.dir(stage), hidden=False)
        self._save()

    def output_digest(self, stage: str) -> str:
        """What a finished stage wrote, for the fingerprints of the stages that read it."""
        info = self.info(stage)
        if info is None or info.status != "done":
            raise RuntimeError(f"stage {stage} has not finished; its readers cannot run yet")
        return info.output or info.fingerprint

    def stage(self, stage: str, fp: str, work: Callable[[Path], Counts | dict[str, Any] | None]) -> bool:
        """Run `work(stage_dir)` unless the stage is done with this fingerprint. Returns True
        if work ran."""
        if self.is_done(stage, fp):
            return False
        d = self.begin(stage, fp)
        counts = work(d)
        self.finish(stage, counts)
        return True

    def set_meta(self, key: str, value: Any) -> None:
        self.manifest[key] = value
        self._save()

    def _save(self) -> None:
        write_json(self.root / self.MANIFEST, self.manifest)
