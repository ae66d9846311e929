"""What the spawner does to start a process: its journal lines, its dirs, the program's path,
and ``posix_spawn``. Standard library only, as the spawner (a sibling it imports as a script);
not even json, shutil or typing, whose imports would delay the spawner's first start.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import time

TYPE_CHECKING = False  # typing's own flag costs an import of typing
if TYPE_CHECKING:
    from typing import Any


def start(
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    stdout: int,
    stderr: int,
    user: list[Any] | None = None,
    expires: float | None = None,
) -> int:
    """Start a program in a session of its own (in ``cwd``, made by ``prepare``), its
    output into the pipes ``stdout`` and ``stderr``; as ``user`` (uid, gid, groups) if given.
    Not once the monotonic clock is past ``expires``: making a large work dir another
    user's can outlast the runtime's wait for the answer, and a start then would be late.

    posix_spawn (a vfork underneath) rather than subprocess: about half the time per start.
    It has no chdir of its own, so we change ours
    (nothing here depends on it), and it searches the PATH of this process, so the program is
    looked up in the instance's PATH first, as an exec in its environment would.
    """
    if not argv:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    if expires is not None and time.monotonic() > expires:
        raise Expired("expired before it could start")
    os.chdir(cwd)
    search = (argv[0], env.get("PATH", os.defpath))
    cached = search in _found
    program = _lookup(*search)
    try:
        if user is not None:
            return _fork_exec(program, argv, env, stdout, stderr, user)
        return os.posix_spawn(
            program,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, stdout, 1),
                (os.POSIX_SPAWN_DUP2, stderr, 2),
            ],
            setsid=True,
            # Python ignores SIGPIPE and SIGXFSZ; a program expects them at their defaults.
            setsigdef=_DEFAULT_SIGNALS,
        )
    except OSError:
        if not cached:
            raise
        del _found[search]  # the program moved since it was looked up: look again, once
        return start(argv, cwd, env, stdout, stderr, user, expires)


def prepare(cwd: str, user: list[Any] | None) -> None:
    """Make a start's work dir (``user``'s, if given): what needs room before its start."""
    make_dir(cwd)
    if user is not None:
        give_tree(cwd, user[0], user[1])


_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class Expired(Exception):
    """The start came too late: the runtime has stopped waiting for its answer."""


def _fork_exec(
    program: str, argv: list[str], env: dict[str, str], stdout: int, stderr: int, user: list[Any]
) -> int:
    """What posix_spawn does in ``start``, and a switch to another user between fork and
    exec, which posix_spawn cannot do. A fork is safe here: the spawner has one thread.
    Not subprocess: its bookkeeping could reap a pid that the spawner reaps itself.

    The child tells why it failed through a close-on-exec pipe: nothing read, it runs.
    """
    uid, gid, groups = user
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        os.close(report_r)
        os.close(report_w)
        raise
    if pid == 0:  # the child: nothing but system calls until exec, or _exit
        code = 0
        try:
            os.setsid()
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            for sig in _DEFAULT_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            os.execve(program, argv, env)
        except OSError as exc:
            code = exc.errno or errno.EPERM
        except BaseException:
            code = errno.EPERM
        try:
            os.write(report_w, str(code).encode())
        finally:
            os._exit(127)
    os.close(report_w)
    try:
        report = b""
        while chunk := os.read(report_r, 64):
            report += chunk
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)  # it never ran the program: not an attempt for the spawner to reap
        code = int(report)
        raise OSError(code, os.strerror(code))
    return pid


def give_tree(path: str, uid: int, gid: int) -> None:
    """Make a work dir, and what was staged into it, belong to the user who runs in it.

    Walked from each folder to the next without following a link: a process an earlier
    attempt left running there cannot swap a folder for a link elsewhere (to root's files)
    and have what it points to given away."""
    fd = os.open(path, _DIR)
    try:
        os.fchown(fd, uid, gid)
        _give_below(fd, uid, gid)
    finally:
        os.close(fd)


def _give_below(fd: int, uid: int, gid: int) -> None:
    with os.scandir(fd) as found:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in found]
    for name, is_dir in entries:
        try:
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            below = os.open(name, _DIR, dir_fd=fd) if is_dir else None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                continue  # gone, or no folder any more: nothing of ours to give
            raise
        if below is not None:
            try:
                _give_below(below, uid, gid)
            finally:
                os.close(below)


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


_found: dict[tuple[str, str], str] = {}  # (program, PATH) -> the file that runs


def _lookup(program: str, path: str) -> str:
    if "/" in program:
        return program
    found = _found.get((program, path))
    if found is None:
        found = _which(program, path)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        if len(_found) < 1024:
            _found[(program, path)] = found
    return found


def _which(program: str, path: str) -> str | None:
    """The first executable file named ``program`` in ``path``, as ``shutil.which`` finds it
    (an empty entry is the current dir)."""
    if not path:
        return None
    seen = set()
    for entry in path.split(os.pathsep):
        if entry in seen:
            continue
        seen.add(entry)
        candidate = os.path.join(entry, program)
        try:
            mode = os.stat(candidate).st_mode
        except (OSError, ValueError):
            continue
        if not stat.S_ISDIR(mode) and os.access(candidate, os.X_OK):
            return candidate
    return None


JOURNAL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
OPEN_JOURNALS = 64  # more open at once: all are closed, and opened again when next written


class Journals:
    """The jobs' attempts journals (``logs/JOB/.attempts``), each open once for appending.

    Every line is one write that starts and ends with a newline: a line torn by a full disk
    cannot spoil the next (the reader skips what it cannot parse), and the lines of two
    spawners appending to one journal (a new one, and one a crashed runtime left running)
    never interleave.
    """

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def write(self, path: str, line: bytes, *, first: bool = False) -> None:
        """Append ``line``; raises OSError if it could not be written whole. An attempt's
        ``first`` line checks that the journal open is still the file at ``path``: a job's
        logs removed or moved (and the job run again) get a new one, where the next runtime
        looks."""
        fd = self.fds.get(path)
        if fd is not None and first and not _same_file(fd, path):
            del self.fds[path]
            os.close(fd)
            fd = None
        if fd is None:
            fd = self._open(path, create=first)
        if os.write(fd, line) != len(line):  # a short write: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _open(self, path: str, *, create: bool) -> int:
        """Open ``path`` for appending; made (and its dir) for an attempt's first line only:
        the later lines of a job whose logs were removed since must not make them again."""
        if len(self.fds) >= OPEN_JOURNALS:
            self.close_all()
        if not create:
            fd = os.open(path, JOURNAL_FLAGS & ~os.O_CREAT)
        else:
            logs = os.path.dirname(path)
            make_dir(logs, remember=True)
            try:
                fd = os.open(path, JOURNAL_FLAGS, 0o600)
            except FileNotFoundError:  # its dir went since we made it
                forget_dir(logs)
                make_dir(logs, remember=True)
                fd = os.open(path, JOURNAL_FLAGS, 0o600)
        self.fds[path] = fd
        return fd

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed, not replaced)."""
    try:
        now = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev)


_made: set[str] = set()  # dirs known to exist: a start makes at most its instance's own


def make_dir(path: str, *, remember: bool = False) -> None:
    """Make ``path`` and its parents. Its parent is remembered as made, and with
    ``remember`` the dir itself (a task's log dir, shared by its instances); an instance's
    own work dir is made at each start, as a program may have removed it."""
    if path in _made:
        return
    parent = os.path.dirname(path)
    if parent not in _made:
        os.makedirs(parent, exist_ok=True)
        _remember(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    if remember:
        _remember(path)


def forget_dir(path: str) -> None:
    """``path`` may be gone (a file in it could not be made): make it anew next time."""
    _made.discard(path)
    _made.discard(os.path.dirname(path))


def _remember(path: str) -> None:
    if len(_made) > 4096:
        _made.clear()
    _made.add(path)


def started_line(tag: bytes, pid: int, mono: float, wall: float) -> bytes:
    """An attempt's second line, once it runs (``tag``: its key, as JSON; finite floats:
    their repr is JSON)."""
    return b'\n{"key":' + tag + f',"pid":{pid},"mono":{mono!r},"wall":{wall!r}}}\n'.encode()


def exited_line(tag: bytes, status: int, mono: float, wall: float, usage: Any) -> bytes:
    """An attempt's last line, once it ended."""
    return (
        b'\n{"key":'
        + tag
        + (
            f',"status":{status},"mono":{mono!r},"wall":{wall!r},"utime":{usage.ru_utime!r},'
            f'"stime":{usage.ru_stime!r},"maxrss_kib":{usage.ru_maxrss}}}\n'
        ).encode()
    )


def abandoned_line(tag: bytes, spawner: bytes) -> bytes:
    """An attempt's last line when it could not be started: no trace of what did not run.
    ``spawner`` (its pid and start, as JSON) takes back only its own key line: a line a full
    disk held back must not take back the same attempt another spawner started since."""
    return b'\n{"key":' + tag + b',"abandoned":true,"spawner":' + spawner + b"}\n"


def identity(pid: int) -> bytes:
    """A process's pid and start as JSON, as a key line names its spawner."""
    ticks = start_ticks(pid)
    return b"[%d,%s]" % (pid, b"null" if ticks is None else str(ticks).encode())


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot: with the pid, names it for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except OSError:
        return None
    return int(line[line.rindex(b")") + 2 :].split()[19])
