"""How a long stage reports progress: its caller hands in a `Progress` (the CLI passes rich bars,
`ui.progress`). The library itself prints nothing, so it stays quiet when used from Python, in
tests and in Ray workers, and no stage depends on the terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

Advance = Callable[..., None]
"""`advance(n=1, total=None)`: n more items done; `total` corrects the expected count."""
Progress = Callable[[str, "int | None"], AbstractContextManager[Advance]]
"""`progress(description, total)`: a context manager yielding `advance`."""
Say = Callable[[str], None]
"""One line for the user (a warning, a note), plain text."""


@contextlib.contextmanager
def silent(description: str, total: int | None) -> Iterator[Advance]:
    """The default `Progress`: counts nothing, prints nothing."""
    yield lambda n=1, total=None: None


def quiet(line: str) -> None:
    """The default `Say`: drops the line."""
