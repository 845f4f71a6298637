"""lre_pl.files: atomic writes (per-process partial files, a failed write leaves nothing), the
writable-folder check, the folder lock; and the rows files' footer (lre_pl.protocol.rows)."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lre_pl.errors import InputError
from lre_pl.files import atomic_path, check_writable_folder, folder_lock, write_text_atomically
from lre_pl.protocol.rows import read_rows, rows_complete, write_rows

ROOT = Path(__file__).parents[2]


def test_each_writer_gets_its_own_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        assert first.name.startswith(f"out.txt.{os.getpid()}-") and first.name.endswith(".partial")
        first.write_text("one")
        second.write_text("two")
    assert target.read_text() == "one"  # the outer rename came last
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.txt"]


def test_two_processes_writing_one_file_each_publish_a_whole_file(tmp_path):
    """With one fixed partial name, A's rename published B's half-written file and B's rename then
    failed: each process now writes its own partial file, and the file is always one of them whole."""
    target = tmp_path / "shared.txt"
    program = (
        "import sys\nfrom lre_pl.files import write_text_atomically\n"
        "for _ in range(150):\n    write_text_atomically(sys.argv[1], sys.argv[2] * 1_000_000)\n"
    )
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", program, str(target), letter], stderr=subprocess.PIPE, text=True
        )
        for letter in "ab"
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr[-2000:]
    text = target.read_text()
    assert len(text) == 1_000_000 and len(set(text)) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shared.txt"]


def test_a_full_disk_removes_the_partial_file_and_says_what_it_needed(tmp_path, monkeypatch):
    target = tmp_path / "folder" / "big.txt"
    target.parent.mkdir()
    target.write_text("the old file")
    real_write_bytes = Path.write_bytes

    def full_disk(self, data):
        real_write_bytes(self, bytes(data)[:1000])  # some of it made it to the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(InputError) as raised:
        write_text_atomically(target, "x" * 3_000_000)
    assert str(raised.value) == (
        f"cannot write big.txt in {target.parent} (No space left on device): it needs 3.0 MB; "
        "make room there or choose another folder, then rerun"
    )
    assert sorted(path.name for path in target.parent.iterdir()) == ["big.txt"]
    assert target.read_text() == "the old file"  # nothing replaced, nothing counted as done


def test_a_failed_write_of_unknown_size_names_what_it_had_written(tmp_path):
    with (
        pytest.raises(
            InputError,
            match=r"cannot write f.png in .* \(Read-only file system\): it needs more than 5 bytes;",
        ),
        atomic_path(tmp_path / "f.png", ".partial.png") as partial,
    ):
        partial.write_text("12345")
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert not list(tmp_path.iterdir())


def test_an_interrupted_write_leaves_no_partial_file(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "f.txt") as partial:
        partial.write_text("half")
        raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("make", "given", "reason"),
    [
        (lambda tmp: (tmp / "afile").write_text("x"), "afile", "a file, not a folder"),
        (lambda tmp: (tmp / "afile").write_text("x"), "afile/x/y", "{tmp}/afile is a file"),
        (lambda tmp: None, "/proc/x", "No such file or directory"),
    ],
)
def test_an_unusable_folder_is_one_line(tmp_path, make, given, reason):
    make(tmp_path)
    folder = given if given.startswith("/") else str(tmp_path / given)
    with pytest.raises(InputError) as raised:
        check_writable_folder(folder, "output_dir")
    assert str(raised.value) == (
        f"output_dir: cannot write in {folder!r} ({reason.format(tmp=tmp_path)}): give another output_dir"
    )


def test_a_read_only_file_system_is_found_by_writing(tmp_path, monkeypatch):
    """Root passes every permission test; only a write finds EROFS (here the probe's write fails)."""
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(
        InputError, match=r"^report: cannot write in '.*/new' \(Read-only file system\): give another report$"
    ):
        check_writable_folder(tmp_path / "new", "report")
    assert not list(tmp_path.iterdir())  # the folder it made for the probe is gone


def test_the_writable_folder_check_leaves_nothing_behind(tmp_path):
    check_writable_folder(tmp_path / "a" / "b", "output_dir")
    assert not list(tmp_path.iterdir())
    (tmp_path / "kept").mkdir()
    check_writable_folder(tmp_path / "kept", "output_dir")
    assert [path.name for path in tmp_path.iterdir()] == ["kept"] and not list((tmp_path / "kept").iterdir())


def test_a_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    program = (
        "import sys, time\nfrom lre_pl.files import folder_lock\n"
        "with folder_lock(sys.argv[1], 'sweep'):\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", program, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(InputError) as raised, folder_lock(tmp_path, "sweep"):
            pass
        assert str(raised.value) == (
            f"another sweep is running in {tmp_path} (pid {holder.pid}); wait for it or give another output_dir"
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    started = time.monotonic()
    with folder_lock(tmp_path, "sweep"):  # the dead process's lock: taken over at once
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "cut",
    [
        lambda text: text[: len(text) // 2],  # in the middle of a line
        lambda text: "".join(text.splitlines(keepends=True)[:2]),  # at a line boundary, 2 of 3 rows
        lambda text: text[:-1],  # the footer's newline: "# rows: 3" could be "# rows: 33" cut short
        lambda text: "".join(line for i, line in enumerate(text.splitlines(keepends=True)) if i != 1),
        lambda text: "",
    ],
)
def test_a_rows_file_cut_short_is_never_complete(tmp_path, cut):
    from lre_pl.protocol.rows import ROW_FIELDS

    path = tmp_path / "r.jsonl"
    write_rows(path, [dict.fromkeys(ROW_FIELDS) | {"value": i} for i in range(3)])
    path.write_text(cut(path.read_text()))
    assert not rows_complete(path)
    with pytest.raises(InputError) as raised:
        read_rows([path])
    assert str(raised.value) == (
        f"{path} is cut short or damaged (its last line is not '# rows: N' for its N rows): rerun the lre-pl "
        "sweep or beta-study that wrote it, which writes it again"
    )
