"""Files that are complete under their final name (written beside it, then renamed over it), sets of
files that appear together, the checks that a folder or a file can be written before any work, a lock
that keeps two runs out of one folder, and the checks every file the tool wrote gets when it is read
back (:func:`load_weights_only`, :func:`field_problem`).

A failed write (a full disk, a folder that went away) removes what it had written and ends in one
:class:`~lre_pl.errors.InputError` line naming the folder and the space it needed: nothing half
written is left, and nothing counts as done.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import secrets
import shutil
import tempfile
import types
import typing
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from lre_pl.errors import InputError


def inside(root: str | Path, *parts: str) -> Path:
    """``root / parts``, a path that stays in ``root``: each part is one file name (not empty, ``.`` or
    ``..``, without a separator or NUL: a programming error otherwise, as every name reaches a path
    through :func:`~lre_pl.protocol.folder.file_name`), and none of the folders and files on the way
    below ``root`` is a symbolic link, which would take a write elsewhere (a handed-over folder's
    ``beta_study -> /elsewhere``): one line naming the link. ``root`` itself is the user's to choose."""
    path = Path(root)
    for part in parts:
        if part in ("", ".", "..") or any(c in part for c in "/\\\0"):
            raise ValueError(f"{part!r} is not one file name")
        path = path / part
        if path.is_symlink():
            raise InputError(
                f"{path} is a symbolic link (to {os.readlink(path)}): lre-pl writes only inside {root} "
                "itself; remove the link, or replace it by a real folder or file, or give another folder"
            )
    return path


def create_exclusively(path: str | Path, text: str = "") -> bool:
    """Create ``path`` holding ``text`` unless it exists (``O_CREAT | O_EXCL``: of several processes that
    try, exactly one succeeds, also on NFS 3+); returns whether this call created it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".partial", size: int | None = None) -> Iterator[Path]:
    """Yield a partial file beside ``path`` to write to; on success it replaces ``path`` (one rename),
    so a crash or Ctrl-C never leaves a truncated file under the final name. Parent folders are made.

    The partial file's name holds the process id and a random part (``<name>.<pid>-<hex><suffix>``):
    two processes writing the same file never write into one partial file, and the last rename wins
    with a whole file. On any failure the partial file is removed; an ``OSError`` (ENOSPC, EROFS, ...)
    becomes one line saying what could not be written where, and how much space it needed (``size``,
    the bytes to write where the caller knows them; else at least what was written)."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        os.replace(partial, path)
    except BaseException as error:
        written = partial.stat().st_size if partial.is_file() else 0
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError):
            needed = f"{_megabytes(size)}" if size is not None else f"more than {_megabytes(written)}"
            raise InputError(
                f"cannot write {path.name} in {path.parent} ({error.strerror or error}): it needs {needed}; "
                "make room there or choose another folder, then rerun"
            ) from None
        raise


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count} bytes"


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    with atomic_path(path, size=len(data)) as partial:
        partial.write_bytes(data)


def write_torch_atomically(path: str | Path, payload) -> None:
    """``torch.save`` of ``payload``, serialised in memory first, so that a full disk is an ``OSError``
    that names the file's size (one line) and never a half-written file."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomically(path, buffer.getbuffer())


def write_text_atomically(path: str | Path, text: str) -> None:
    write_bytes_atomically(path, text.encode())


def check_writable_folder(folder: str | Path, option: str) -> None:
    """Raise a one-line error unless ``folder`` exists as a folder this process can write in, or can
    be made so; checked by writing (a read-only file system or ``/proc`` passes every permission
    test), before any work. Leaves nothing behind: the folders it made and its probe file go again.
    ``option`` names the setting that gave the folder (``output_dir``, ``report``)."""
    folder = Path(folder)
    missing = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    blocking = next(path for path in (folder, *folder.parents) if path.exists())
    try:
        if not blocking.is_dir():
            reason = "a file, not a folder" if blocking == folder else f"{blocking} is a file"
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                    reason = None
            except OSError as error:
                reason = error.strerror or str(error)
    finally:
        for path in missing:
            with contextlib.suppress(OSError):
                path.rmdir()
    if reason:
        raise InputError(f"{option}: cannot write in {str(folder)!r} ({reason}): give another {option}")


def check_writable_file(path: str | Path, option: str) -> None:
    """Raise a one-line error unless ``path`` can be written as a file: not a folder, in a folder that
    can be written (:func:`check_writable_folder`); before any work."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option}: {str(path)!r} is a folder: give the path of a file to write")
    check_writable_folder(path.parent, option)


@contextlib.contextmanager
def files_together(folder: str | Path) -> Iterator[Path]:
    """Yield a hidden folder inside ``folder`` to write a set of files in; when the body ends well they
    move to the same places under ``folder``, together (one rename each, after all are written). A stop
    or a failure before that leaves none of them (the hidden folder goes), and an earlier run's set
    stays as it was."""
    folder = Path(folder)
    staged = folder / f".partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staged.mkdir(parents=True)
        yield staged
        for path in sorted(path for path in staged.rglob("*") if path.is_file()):
            target = folder / path.relative_to(staged)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock (an ``flock`` on ``<folder>/.lock``) while the body runs; a second
    process is refused at once, in one line naming the holder's pid. The kernel drops the lock when
    its process ends, however it ends (SIGKILL too), so a dead run's lock is taken over, never stale.
    ``what`` names the work in the message (``sweep``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = inside(folder, ".lock")  # a link there would be truncated through
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(
                f"another {what} is running in {folder} (pid {holder}); wait for it or give another output_dir"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def zip_damage(source: str | Path | IO[bytes], whole: bool = True) -> str | None:
    """Why the ``torch.save`` file at ``source`` (a path, or its bytes) cannot be read whole, or ``None``.

    ``torch.save`` writes a zip file, whose directory is at its end: a file cut short has none (found by
    reading the end alone), and so has a file of another format (a plain pickle, text). ``whole`` also
    checks every member's CRC, which reads the whole file: ``torch.load`` checks none, and would read
    damaged bytes as numbers. Every reader of operators, bundles and checkpoints asks this first."""
    try:
        with zipfile.ZipFile(source) as archive:
            failed = archive.testzip() if whole else None
    except OSError as error:
        return error.strerror or str(error)
    except zipfile.BadZipFile as error:
        return f"cut short or damaged: {error}"
    return f"its {failed} fails its CRC check" if failed else None


def load_weights_only(source: str | Path | IO[bytes], refused: str = "") -> tuple[Any, str | None]:
    """``(payload, None)`` of the ``torch.save`` file at ``source`` (a path, or its bytes), checked whole
    first (:func:`zip_damage`) and loaded with ``torch.load(weights_only=True)``, so that nothing in it can
    run code; ``(None, why not)`` otherwise: the damage, or the exception's name followed by ``refused``
    (never torch's own advice to load with ``weights_only=False``). Operators, bundles and checkpoints
    are all read here."""
    import torch

    reason = zip_damage(source)
    if reason is not None:
        return None, reason
    if not isinstance(source, (str, Path)):
        source.seek(0)
    try:
        return torch.load(source, weights_only=True, map_location="cpu"), None
    except Exception as error:  # torch's own message advises weights_only=False: never do that here
        return None, f"{type(error).__name__}{refused}"


def field_problem(
    payload: Mapping[str, Any], cls: type, shapes: Mapping[str, tuple], sizes: Mapping[str, int] | None = None
) -> str | None:
    """The first field of ``payload`` (a file's fields, read back) whose value does not fit the
    dataclass ``cls``'s annotation or its tensor shape, as ``"<field> is <what it is>, not <what it
    must be>"``; ``None`` when all fit. ``shapes``: field -> ``(float | int, size, ...)``, the sizes numbers or
    names (``"d"``) bound by ``sizes`` or by the first field that uses them. A float is a finite number."""
    hints = typing.get_type_hints(cls)
    bound = dict(sizes or {})
    for name, value in payload.items():
        if name in hints and not _fits(value, hints[name]):
            return f"{name} is {_described(value)}, not {_type_name(hints[name])}"
        if name in shapes and value is not None:
            kind, *dims = shapes[name]
            shape = list(getattr(value, "shape", None) or []) if hasattr(value, "is_floating_point") else None
            expected = [bound.setdefault(dim, size) if isinstance(dim, str) else dim
                        for dim, size in zip(dims, shape or [])]  # fmt: skip
            if (
                shape is None
                or shape != expected
                or len(shape) != len(dims)
                or value.is_floating_point() is not (kind is float)
            ):
                names = ", ".join(str(dim) for dim in dims)
                what = f"a {_described(value)}" if shape is not None else _described(value)
                return f"{name} is {what}, not a {kind.__name__} tensor [{names}]"
    return None


def _fits(value: Any, hint: Any) -> bool:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, argument) for argument in arguments)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(item, arguments[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _fits(key, arguments[0]) and _fits(item, arguments[1]) for key, item in value.items()
        )
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return (
        getattr(hint, "__name__", None)
        if typing.get_origin(hint) is None
        else str(hint).replace("typing.", "")
    )


def _described(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{getattr(value, 'dtype', type(value).__name__)} tensor {list(shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"
