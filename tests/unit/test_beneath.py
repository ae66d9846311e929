"""A work dir's files reached without following a link, over real files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from aiobatch.executors import _launch as launch
from aiobatch.storage import beneath, files
from aiobatch.storage.base import Local, StorageError


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_place_below_another_never_leaves_it_and_keeps_its_names(tmp_path: Path) -> None:
    inputs = Local.of(tmp_path, "in/")
    assert inputs.child("a/b.txt") == Local(tmp_path, "in/a/b.txt")
    assert inputs.child("report\\2024.txt").path == tmp_path / "in" / "report\\2024.txt"
    for escaping in ("../x", "a/../../x", "a/.."):
        with pytest.raises(StorageError, match="would land outside in"):
            inputs.child(escaping)
    with pytest.raises(StorageError, match=f"would land outside {tmp_path}"):
        Local.of(tmp_path, "../x")


def test_the_work_dir_itself_is_a_folder_to_upload(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("f")
    assert beneath.kind(Local.of(tmp_path, "./")) == "folder"
    assert list(beneath.entries(Local.of(tmp_path, "."))) == [("a", True), ("a/f", False)]


def test_a_wide_tree_is_walked_with_one_folder_open_at_a_time(tmp_path: Path) -> None:
    for index in range(300):
        (tmp_path / f"d{index:03}").mkdir()
        (tmp_path / f"d{index:03}" / "f").write_text("")
    before, most = open_fds(), 0
    found = 0
    for _, is_folder in beneath.entries(Local(tmp_path)):
        most = max(most, open_fds() - before)
        found += not is_folder
    assert found == 300 and most <= 1


def test_a_file_that_grows_while_it_is_copied_goes_out_as_large_as_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "grows").write_bytes(b"x" * 3_000_000)
    open_regular = beneath.open_regular

    def then_it_grows(place: Local) -> tuple[int, int]:
        opened = open_regular(place)
        with (work / "grows").open("ab") as more:
            more.write(b"y" * 5_000_000)
        return opened

    monkeypatch.setattr(beneath, "open_regular", then_it_grows)
    files._upload(Local.of(work, "grows"), out)
    assert out.read_bytes() == b"x" * 3_000_000


def test_a_fifo_or_a_link_is_refused_without_being_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("/etc/hostname")
    for name in ("fifo", "link"):
        with pytest.raises(StorageError, match="is not a regular file"):
            beneath.open_regular(Local.of(tmp_path, name))


def test_a_work_dir_is_given_to_its_user_without_following_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is below a work dir becomes its user's; a folder swapped for a link to root's
    files just before it is walked into gives nothing of them away."""
    work, elsewhere = tmp_path / "work", tmp_path / "root-only"
    (work / "kept" / "deep").mkdir(parents=True)
    (work / "kept" / "deep" / "f").write_text("")
    (work / "swapped").mkdir()
    elsewhere.mkdir()
    (elsewhere / "secret").write_text("")
    (work / "link").symlink_to(elsewhere)
    real_open = os.open

    def swapping(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "swapped":  # a process left behind replaces it between listing and walking
            os.rmdir(work / "swapped")
            (work / "swapped").symlink_to(elsewhere)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", swapping)
    uid, gid = 65534, 65534
    launch.give_tree(str(work), uid, gid)
    owners = {p.relative_to(tmp_path).as_posix(): p.lstat().st_uid for p in tmp_path.rglob("*")}
    assert owners["work/kept/deep/f"] == owners["work/link"] == uid
    assert owners["root-only"] == owners["root-only/secret"] == os.getuid() != uid


def test_a_tree_nested_deeper_than_recursion_or_a_path_goes_is_removed(tmp_path: Path) -> None:
    """A task may nest folders thousands deep (``mkdir d; cd d`` in a loop): removed, with
    its files and links (not what they point to)."""
    top, kept = tmp_path / "job", tmp_path / "kept"
    kept.mkdir()
    (kept / "f").write_text("kept")
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(3000):  # deeper than Python's recursion limit and than PATH_MAX
            os.mkdir("d", dir_fd=fd)
            os.symlink(str(kept), "link", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    beneath.remove_tree(top)
    assert not top.exists() and (kept / "f").read_text() == "kept"
