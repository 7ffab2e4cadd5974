"""Where commands write: never delete, move or overwrite what the platform did not write itself.

Every output the platform writes carries a sign of its origin, so a later command can tell its own
files from the user's:

- a folder (``galaxy10 report --out``) holds :data:`MARKER_NAME`, a JSON file listing the files the
  platform put there;
- an HDF5 file has the root attribute ``written_by`` (files of earlier versions are recognised by
  their ``generator`` / ``source`` attributes);
- a PNG, JPEG, PDF or SVG figure carries :data:`OWNER_TAG` in its metadata.

:func:`check_output_dir` and :func:`check_output_file` refuse, with one line naming ``--force`` or
another path, an output that exists and is not the platform's; call them *before* any expensive
work. :func:`output_dir` then writes a folder: a new or previous platform folder is replaced
atomically, an empty or ``--force``-d folder receives each file atomically and keeps everything
else it holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py

from core.errors import ConfigError
from core.files import _host_slug, is_temp_name, os_error_reason, remove_stale_temps

log = logging.getLogger(__name__)

#: The marker file of a folder the platform wrote.
MARKER_NAME = ".galaxy10-output.json"
#: The text every figure the platform writes carries in its metadata.
OWNER_TAG = "written by galaxy10"
#: The HDF5 root attribute naming the command that wrote a file.
H5_OWNER_ATTR = "written_by"
#: How much of the start and the end of a file is searched for :data:`OWNER_TAG`.
_TAG_WINDOW = 1 << 16
#: HDF5 attributes of files written by earlier versions of the platform.
_LEGACY_H5 = (("generator", "galaxy10-platform"), ("created_by", "galaxy10 "))


def _first(items: list[str], k: int = 3) -> str:
    shown = ", ".join(items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")


def _nearest_existing(path: Path) -> Path:
    return next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), Path("."))


def _unwritable_reason(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (tried for real: permission bits do not bind root, and
    read-only or virtual file systems refuse anyway), or None when it can."""
    try:
        probe = tempfile.mkdtemp(prefix=f".galaxy10-probe.pid{os.getpid()}@{_host_slug()}.", suffix=".tmp", dir=folder)
    except OSError as err:
        return os_error_reason(err)
    os.rmdir(probe)
    return None


def _check_creatable(path: Path, option: str) -> None:
    """Raise unless the missing ``path`` can be created: its nearest existing ancestor is a writable folder."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise ConfigError(f"cannot write {option} {path}: {base} is a file, not a folder; choose another {option}")
    reason = _unwritable_reason(base)
    if reason:
        raise ConfigError(
            f"cannot write {option} {path}: folder {base} is not writable ({reason}); choose another {option}"
        )


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def platform_wrote_file(path: str | os.PathLike) -> bool:
    """Whether the existing file ``path`` was written by the platform (see the module docstring)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(_TAG_WINDOW)
            size = p.stat().st_size
            tail = b""
            if size > _TAG_WINDOW:
                fh.seek(max(_TAG_WINDOW, size - _TAG_WINDOW))
                tail = fh.read()
    except OSError:
        return False
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return _h5_owned(p)
    tag = OWNER_TAG.encode()
    return tag in head or tag in tail


def _h5_owned(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in f.attrs.keys()}
    except Exception:  # noqa: BLE001 - a damaged file is not one we recognise
        return False

    def text(value: object) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    if text(attrs.get(H5_OWNER_ATTR, "")).startswith("galaxy10"):
        return True
    return any(key in attrs and text(attrs[key]).startswith(prefix) for key, prefix in _LEGACY_H5)


def check_output_file(path: str | os.PathLike, *, option: str = "--out", force: bool = False) -> Path:
    """Check that ``path`` may be written; return it.

    Missing: its folder must be creatable. Existing: it must be a file the platform wrote
    (:func:`platform_wrote_file`), unless ``force``. A folder is always refused.

    Raises
    ------
    ConfigError
        One line naming the path and the fix (``--force`` or another path).
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a folder; give a file name inside it, e.g. {p / 'out'}")
    if p.exists():
        if not force and not platform_wrote_file(p):
            raise ConfigError(
                f"{option} {p} exists and was not written by galaxy10; choose another {option}, or "
                "add --force to replace it"
            )
        reason = _unwritable_reason(p.parent)
        if reason:
            raise ConfigError(
                f"cannot replace {option} {p}: folder {p.parent} is not writable ({reason}); choose another {option}"
            )
        return p
    _check_creatable(p, option)
    return p


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------
def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a folder the platform wrote, or None."""
    marker = Path(folder) / MARKER_NAME
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        return None
    return doc


def _relative_files(folder: Path) -> list[str]:
    """Every entry below ``folder`` (files, links, empty folders) as sorted relative POSIX paths."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        if rel_root == Path("."):  # temporary folders of writers (ours, now or killed) are not contents
            dirs[:] = [d for d in dirs if not is_temp_name(d)]
            files = [f for f in files if not is_temp_name(f)]
        out.extend((rel_root / name).as_posix() for name in files)
        out.extend((rel_root / name).as_posix() + "/" for name in dirs if not any(os.scandir(Path(root) / name)))
    return sorted(out)


def _legacy_report_files(folder: Path, entries: list[str]) -> set[str]:
    """The files of a report written before folders carried a marker (its ``report.json`` names the
    study and the scoring run): ``report.*`` and the top-level PNGs. Such a folder is updated file by
    file (nothing deleted), never swapped."""
    try:
        doc = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(doc, dict) or "scoring_run_id" not in doc or "study" not in doc:
        return set()
    return {
        e for e in entries if e in ("report.html", "report.md", "report.json") or ("/" not in e and e.endswith(".png"))
    }


def foreign_files(folder: str | os.PathLike) -> list[str]:
    """Entries of the existing ``folder`` that the platform did not write (all of them without a marker,
    except the files of a report from before markers)."""
    folder = Path(folder)
    entries = [e for e in _relative_files(folder) if e != MARKER_NAME]
    marker = read_marker(folder)
    ours = set(marker["files"]) if marker else _legacy_report_files(folder, entries)
    return [e for e in entries if e not in ours]


def check_output_dir(path: str | os.PathLike, *, what: str, option: str = "--out", force: bool = False) -> Path:
    """Check that the folder ``path`` may receive the ``what`` files; return it.

    Accepted: a missing folder that can be created, an empty folder, a folder the platform wrote
    (its marker lists everything in it), or any folder with ``force`` (its files stay).

    Raises
    ------
    ConfigError
        For an existing file, a folder holding files the platform did not write (without ``force``)
        or a folder that cannot be written; one line naming the fix.
    """
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise ConfigError(
                f"{option} {p} is an existing file, not a folder; give a folder path for the {what} "
                "(the file is left alone)"
            )
        reason = _unwritable_reason(p)
        if reason:
            raise ConfigError(
                f"cannot write the {what} into {p}: the folder is not writable ({reason}); choose another {option}"
            )
        foreign = foreign_files(p)
        if foreign and not force:
            raise ConfigError(
                f"{option} {p} holds files galaxy10 did not write ({_first(foreign)}); choose a new "
                f"or empty folder, or add --force to write the {what} into it (nothing there is "
                "deleted)"
            )
        return p
    _check_creatable(p, option)
    return p


def _marker_doc(what: str, files: list[str]) -> str:
    return (
        json.dumps(
            {
                "written_by": f"galaxy10 {what}",
                "files": files,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            },
            indent=2,
        )
        + "\n"
    )


def _make_temp_dir(target: Path) -> Path:
    """A temporary folder beside ``target`` (else inside it, when only the target is writable)."""
    prefix = f".{target.name or 'out'}.pid{os.getpid()}@{_host_slug()}."
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    except OSError:
        if not target.is_dir():
            raise
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target))


def _merge_into(tmp: Path, target: Path, files: list[str], previous: list[str]) -> None:
    """Move each of ``files`` from ``tmp`` into ``target`` (one atomic rename each); remove the files of
    the previous platform output (``previous``) that the new one no longer has."""
    for rel in files:
        dst = target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_dir() and not dst.is_symlink():
            raise ConfigError(
                f"cannot write {dst}: a folder of that name is in the way; move it or choose another output folder"
            )
        os.replace(tmp / rel, dst)
    for rel in sorted(set(previous) - set(files) - {MARKER_NAME}, reverse=True):
        with contextlib.suppress(OSError):  # only what the marker says the platform wrote
            old = target / rel
            old.rmdir() if rel.endswith("/") else old.unlink()


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, *, what: str, option: str = "--out", force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success its files land in ``path`` (see the module docstring).

    A missing ``path`` or a previous platform folder holding only its own files is replaced as a
    whole (rename); otherwise (empty folder, ``force``, or a folder that cannot be renamed, such as
    the working folder) each file is renamed into place and nothing else in ``path`` is touched.
    The marker file is written last. On error the temporary folder is removed and ``path`` is as
    it was.
    """
    check_output_dir(path, what=what, option=option, force=force)
    target = Path(os.path.abspath(path))
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    try:
        tmp = _make_temp_dir(target)
    except OSError as err:
        raise ConfigError(
            f"cannot write the {what} into {target} ({os_error_reason(err)}); choose another {option}"
        ) from None
    try:
        yield tmp
        files = _relative_files(tmp)
        (tmp / MARKER_NAME).write_text(_marker_doc(what, files))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        check_output_dir(target, what=what, option=option, force=force)  # it may have changed meanwhile
        if not target.exists():
            os.replace(tmp, target)
            return
        marker = read_marker(target)
        previous = list(marker["files"]) if marker else []
        holds_cwd = target == Path.cwd() or target in Path.cwd().parents  # never rename the working folder
        if marker and not foreign_files(target) and tmp.parent == target.parent and not holds_cwd:
            aside = Path(
                tempfile.mkdtemp(
                    prefix=f".{target.name}.pid{os.getpid()}@{_host_slug()}.old.", suffix=".tmp", dir=target.parent
                )
            )  # a temp name: removed by the next writer if we die
            try:
                os.replace(target, aside / "old")
            except OSError:  # the working folder or a mount point: fall back to file-by-file
                aside.rmdir()
            else:
                os.replace(tmp, target)
                shutil.rmtree(aside, ignore_errors=True)  # holds only files the platform wrote
                return
        legacy = set() if marker else _legacy_report_files(target, _relative_files(target))
        _merge_into(tmp, target, files, previous)
        kept = sorted(legacy - set(files))  # an old report's files not rewritten stay, and stay ours
        if kept:
            (tmp / MARKER_NAME).write_text(_marker_doc(what, sorted({*files, *kept})))
        os.replace(tmp / MARKER_NAME, target / MARKER_NAME)
    except OSError as err:
        raise ConfigError(
            f"cannot write the {what} into {target} ({os_error_reason(err)}); check its free space "
            f"and permissions or choose another {option}"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
