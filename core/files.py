"""Files the platform writes: atomic writes (a temporary name, then a rename: nothing half-written is ever
left behind), the temporary names and their clean-up, disk space reserved up front, one-line OS errors."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _host_slug() -> str:
    """This machine's name reduced to ``[A-Za-z0-9_-]`` (it is part of temporary file names)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"


#: ``.NAME.pid<PID>@<host>.<random>.tmp``: the temporary names :func:`atomic_path` uses.
_TEMP_NAME = re.compile(r"^\..*\.pid\d+@[A-Za-z0-9_-]+\..*tmp$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file or folder of :func:`atomic_path` / ``outputs.output_dir``."""
    return _TEMP_NAME.match(name) is not None


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove temporary files of :func:`atomic_path` for ``target`` whose writer died; return them.

    A process killed with SIGKILL in the middle of a write cannot clean up: its temporary file stays
    beside the target. The temporary name records the writer's host and pid, so the next writer on
    the same host removes the files of processes that no longer exist (never those of live ones or
    of other hosts sharing the folder).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.pid(\d+)@([A-Za-z0-9_-]+)\.")
    host = _host_slug()
    removed: list[Path] = []
    for candidate in target.parent.iterdir():
        m = pattern.match(candidate.name)
        if not m or m.group(2) != host or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            if candidate.is_dir() and not candidate.is_symlink():  # a folder output's temporary folder
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
            log.info(
                "removed %s, left by process %s that died while writing %s", candidate.name, m.group(1), target.name
            )
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same folder (so the rename is atomic on one file system) and
    is removed if the block raises, including on ``KeyboardInterrupt``. Its name records this host
    and process id, so temporary files of writers killed outright (SIGKILL, power loss) are removed
    by the next write of the same target (:func:`remove_stale_temps`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.pid{os.getpid()}@{_host_slug()}.", suffix=suffix or ".tmp", dir=target.parent
    )
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
