"""A quiet process start: TensorFlow's C++ start-up chatter filtered where it is written.

TensorFlow 2.21 logs through absl from its shared libraries while they load. Before absl is
initialised every record goes to the C-level stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says, so on some
CPUs every command that imports TensorFlow printed::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... port.cc:153] oneDNN custom operations are on. You may see slightly different ...

:func:`quiet_startup` installs an import hook: the first import of :data:`GUARDED` runs with file
descriptor 2 pointed at a temporary file; afterwards the lines that match :data:`NOISE` (start-up
notes that say nothing to a user) are dropped and every other line is written to the real stderr, in
order. So a real warning or error written during the import still reaches the user.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

#: Top-level modules whose first import is guarded.
GUARDED: frozenset[str] = frozenset({"tensorflow"})

#: Start-up notes of TensorFlow's C++ runtime that carry nothing a user can act on.
NOISE: tuple[re.Pattern[bytes], ...] = tuple(
    re.compile(p)
    for p in (
        rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
        rb"^[IW]\d{4} [\d:.]+\s+\d+ port\.cc:\d+\] oneDNN custom operations are on\.",
        rb"^[IW]\d{4} [\d:.]+\s+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
        rb"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$",
        # The GPU wheels register the same CUDA plugins from two libraries and say so at import.
        rb"^[EW]\d{4} [\d:.]+\s+\d+ cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register cu(DNN|FFT|BLAS) factory",
        rb"^[EW]\d{4} [\d:.]+\s+\d+ computation_placer\.cc:\d+\] computation placer already registered",
    )
)

_lock = threading.Lock()  # one capture at a time; a nested call in the same thread returns before it
_active = threading.local()


#: When this process started the platform (wall clock; ``--budget`` counts from here).
STARTED = time.time()


def is_noise(line: bytes) -> bool:
    """Whether one stderr line (without its newline) is a start-up note :data:`NOISE` drops."""
    return any(p.search(line) for p in NOISE)


def drop_noise(text: bytes) -> bytes:
    """``text`` without its :data:`NOISE` lines; every other line is kept as it was."""
    kept = [line for line in text.splitlines(keepends=True) if not is_noise(line.rstrip(b"\r\n"))]
    return b"".join(kept)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Point file descriptor 2 at a temporary file inside the block; then forward all but the noise.

    Works on what C code writes (TensorFlow's shared libraries), not only on ``sys.stderr``. Nested
    use is a no-op, so a guarded import inside another one forwards once. While another thread holds the
    capture this one does not wait for it (file descriptor 2 is the process's: its output lands in the
    same capture): waiting could deadlock against Python's per-module import locks, which that thread
    may need.
    """
    if getattr(_active, "depth", 0) or not _lock.acquire(blocking=False):
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            yield from _captured(sink)
    finally:
        _lock.release()


def _captured(sink: Any) -> Iterator[None]:
    """The body of :func:`filtered_stderr` with the capture held: fd 2 into ``sink``, then forwarded."""
    _active.depth = 1
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
    finally:
        os.close(saved)
        _active.depth = 0
        sink.seek(0)
        kept = drop_noise(sink.read())
        if kept:
            os.write(2, kept)


class _FilteredLoader(importlib.abc.Loader):
    """Runs the wrapped loader's ``exec_module`` inside :func:`filtered_stderr`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps the real loader (resource readers and lazy loaders ask it).
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        with filtered_stderr():
            self._loader.exec_module(module)


class _GuardedImports(importlib.abc.MetaPathFinder):
    """Finds :data:`GUARDED` modules with the other finders and hands back a filtering loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in GUARDED:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _GuardedImports) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _FilteredLoader(spec.loader)
                return spec
        return None


def install_import_guard() -> None:
    """Put the guard first on ``sys.meta_path`` (once); modules already imported are not affected."""
    if not any(isinstance(finder, _GuardedImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, _GuardedImports())


def quiet_startup() -> None:
    """Prepare a process that may import TensorFlow and albumentations: call first in every entry point.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's own info lines after start-up) and
    ``NO_ALBUMENTATIONS_UPDATE=1`` (its version check would reach for the network) unless the user
    set them, and installs the import guard.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    install_import_guard()
