"""Small file helpers: atomic writes so nothing half-written is ever left behind."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same folder (so the rename is atomic on one file system) and
    is removed if the block raises, including on ``KeyboardInterrupt``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON through :func:`atomic_path`; return the path."""
    with atomic_path(path, suffix=".json.tmp") as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return Path(path)


def os_error_reason(err: OSError) -> str:
    """The one-line reason of a failed file operation: ``No space left on device`` rather than HDF5's
    multi-line driver report."""
    if err.errno:
        return os.strerror(err.errno)
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def reserve_space(path: str | os.PathLike, nbytes: int | None = None) -> None:
    """Allocate the disk blocks of file ``path`` up to ``nbytes`` (default: its size) now.

    A file written through a memory map is sparse until each page is touched; when the disk fills
    up, touching a page kills the process with SIGBUS (no message, temporary file left behind).
    With the blocks reserved first, a full disk is an ``OSError`` (ENOSPC) here instead.
    """
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: nothing to reserve with
        log.debug("os.posix_fallocate is not available; %s is not preallocated", path)
        return
    size = os.path.getsize(path) if nbytes is None else int(nbytes)
    if size <= 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        log.debug("file system of %s cannot preallocate (%s)", path, os_error_reason(err))
    finally:
        os.close(fd)
