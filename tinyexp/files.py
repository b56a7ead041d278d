"""Writing files so that a reader never sees half of one: the one atomic-write helper.

Every file tinyexp writes for others to read (metrics, summaries, reports, cache entries,
ONNX artifacts) goes through :func:`atomic_write`: the content lands in a temporary file in the
same folder, then ``os.replace`` swaps it in. A crash leaves the old file or none, never a
truncated one, and the temporary file is removed.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[Path], Any]) -> Path:
    """Write ``content`` to ``path`` atomically.

    Args:
        path: the destination; its folder is created if missing.
        content: text, bytes, or a callable that writes the file at the temporary path it is
            given (``lambda tmp: torch.save(state, tmp)``).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name created with the umask's permissions (mkstemp would make it 0600).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.open("xb").close()
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write JSON atomically; NaN and infinities become null so any JSON reader takes it."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in data.items()}
    return atomic_write(path, json.dumps(clean, indent=2, sort_keys=True))


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block: one
    process at a time on this machine (``fcntl.flock``; released if the holder dies)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
