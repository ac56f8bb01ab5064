"""The control channel behind ``pyflight snapshot PID``: a Unix socket per process.

The socket lives at a well-known per-pid path in a private directory (mode 0700,
owned by this user; ``$XDG_RUNTIME_DIR/pyflight`` or ``<tmp>/pyflight-<uid>``), so
any tool of the same user can find it from a pid and nobody else can connect. A daemon
thread answers one request at a time with a fresh snapshot.

Protocol: the client sends ``SNAPSHOT <reason>\\n``; the server answers
``OK <length>\\n`` followed by exactly that many bytes, or ``ERR <message>\\n``.
"""

from __future__ import annotations

import atexit
import os
import socket
import stat
import struct
import sys
import tempfile
import threading
from pathlib import Path

from pyflight.core.daemon import is_deferred, start_without_signals
from pyflight.errors import PyflightError, SnapshotInProgress
from pyflight.format.writer import write_bytes_atomically
from pyflight.recorder import FlightRecorder
from pyflight.triggers.snapshots import snapshot_bytes

REASON = "snapshot"
_MAX_REQUEST = 256
_ACCEPT_POLL_S = 1.0
_IO_TIMEOUT_S = 30.0


class ControlError(PyflightError):
    """A snapshot could not be obtained over the control channel."""


class NoControlChannel(ControlError):
    """The pid is not a live process of ours with a control channel."""


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"pyflight: {message}\n")
    except Exception:
        pass


def candidate_dirs() -> list[Path]:
    """Where control sockets may live, preferred first."""
    dirs = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        dirs.append(Path(runtime) / "pyflight")
    dirs.append(Path(tempfile.gettempdir()) / f"pyflight-{os.getuid()}")
    return dirs


def _check_private(path: Path) -> None:
    """Refuse a directory someone else could have planted or can write into."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ControlError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise ControlError(f"{path} belongs to another user")
    if info.st_mode & 0o077:
        raise ControlError(f"{path} is accessible to other users (mode {stat.S_IMODE(info.st_mode):o})")


def private_dir() -> Path:
    """The socket directory, created 0700 if needed and checked to be ours alone."""
    problems = []
    for candidate in candidate_dirs():
        try:
            try:
                os.mkdir(candidate, 0o700)
            except FileExistsError:
                pass
            _check_private(candidate)
            return candidate
        except (OSError, ControlError) as exc:
            problems.append(f"{candidate}: {exc}")
    raise ControlError("no private directory for the control socket: " + "; ".join(problems))


def socket_path(pid: int, directory: Path | None = None) -> Path:
    return (directory or private_dir()) / f"{pid}.sock"


def remove_stale(directory: Path) -> None:
    """Remove sockets of processes that no longer exist (killed, or ended in os._exit)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        stem, _, ext = name.partition(".")
        if ext != "sock" or not stem.isdigit():
            continue
        try:
            os.kill(int(stem), 0)
        except ProcessLookupError:
            try:
                os.unlink(directory / name)
            except OSError:
                pass
        except OSError:
            pass


class ControlServer:
    """Serves snapshots of ``recorder`` (default: the running one) on this pid's socket."""

    def __init__(self, recorder: FlightRecorder | None = None) -> None:
        self.recorder = recorder
        self.pid = os.getpid()
        directory = private_dir()
        remove_stale(directory)
        self.path = socket_path(self.pid, directory)
        self._closed = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                os.unlink(self.path)  # left by a dead process that had our pid
            except FileNotFoundError:
                pass
            old_umask = os.umask(0o177)
            try:
                self._sock.bind(os.fspath(self.path))
            finally:
                os.umask(old_umask)
            os.chmod(self.path, 0o600)
            self._sock.listen(8)
            self._sock.settimeout(_ACCEPT_POLL_S)
        except BaseException:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._serve, name="pyflight-control", daemon=True)
        start_without_signals(self._thread)

    def close(self) -> None:
        """Stop serving and remove the socket (only the process that made it removes it)."""
        if self._closed.is_set():
            return
        self._closed.set()
        started = not is_deferred(self._thread)  # a forked child's thread may not be started yet
        if started and self.pid == os.getpid() and self._thread is not threading.current_thread():
            try:  # wake the accepting thread (closing or shutting down a socket does not)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as poke:
                    poke.settimeout(0.5)
                    poke.connect(os.fspath(self.path))
            except OSError:
                pass
            self._thread.join(timeout=_ACCEPT_POLL_S + 1)
        try:
            self._sock.close()
        except OSError:
            pass
        if self.pid == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _forget_in_child(self) -> None:
        """After fork: drop the inherited descriptor, leave the parent's socket alone."""
        self._closed.set()
        try:
            self._sock.close()
        except OSError:
            pass

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if self._closed.is_set():
                conn.close()
                return
            try:
                with conn:
                    self._answer(conn)
            except Exception as exc:  # a client that went away, a bug: never the program's problem
                _say(f"control channel: {type(exc).__name__}: {exc}")

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(_IO_TIMEOUT_S)
        peer = _peer_credentials(conn)
        if peer is not None and peer[1] not in (os.getuid(), 0):
            conn.sendall(b"ERR permission denied\n")
            return
        request = _read_line(conn)
        command, _, detail = request.partition(" ")
        if command != "SNAPSHOT":
            conn.sendall(b"ERR unknown request\n")
            return
        who = f"pid {peer[0]}" if peer is not None else "a local client"
        try:
            data = snapshot_bytes(self.recorder, REASON, detail or f"requested by {who}")
        except SnapshotInProgress:
            conn.sendall(b"ERR busy: another snapshot is being written, try again\n")
            return
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            conn.sendall(f"ERR {message}\n".encode())
            return
        conn.sendall(f"OK {len(data)}\n".encode() + data)


def _peer_credentials(conn: socket.socket) -> tuple[int, int] | None:
    """(pid, uid) of the connected peer where the OS tells (Linux SO_PEERCRED)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
    except OSError:
        return None
    return pid, uid


def _read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise ControlError("request line too long")
    return data.decode("utf-8", "replace").strip()


_lock = threading.Lock()
_server: ControlServer | None = None
_hooks_installed = False


def enable(recorder: FlightRecorder | None = None) -> ControlServer:
    """Let ``pyflight snapshot <this pid>`` ask this process for a snapshot.

    Idempotent; the socket is removed at exit. Snapshots are of ``recorder``, or of
    whichever recorder is running when the request comes.
    """
    global _server, _hooks_installed
    with _lock:
        if _server is not None and _server.pid == os.getpid() and not _server._closed.is_set():
            return _server
        _server = ControlServer(recorder)
        if not _hooks_installed:
            atexit.register(disable)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_in_child)
            _hooks_installed = True
        return _server


def disable() -> None:
    """Close this process's control channel, if it has one."""
    global _server
    server = _server
    if server is not None and server.pid == os.getpid():
        server.close()
        _server = None


def current() -> ControlServer | None:
    """This process's control server, if enabled."""
    server = _server
    return server if server is not None and server.pid == os.getpid() else None


def _after_fork_in_child() -> None:
    global _server, _lock
    _lock = threading.Lock()
    server = _server
    if server is not None and server.pid != os.getpid():
        server._forget_in_child()
        _server = None


# client ----------------------------------------------------------------------------


def request_snapshot(pid: int, timeout: float = _IO_TIMEOUT_S) -> bytes:
    """Ask process ``pid`` for a snapshot over its control channel; return the bytes.

    NoControlChannel if there is no such process of ours or it has no channel;
    ControlError if it answered with an error or the transfer broke off.
    """
    if pid <= 0:
        raise NoControlChannel(f"not a process id: {pid}")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise NoControlChannel(f"no process with pid {pid}") from None
    except PermissionError:
        raise NoControlChannel(f"process {pid} belongs to another user") from None
    for directory in candidate_dirs():
        path = directory / f"{pid}.sock"
        if not os.path.exists(path):
            continue
        try:
            _check_private(directory)
        except (OSError, ControlError) as exc:
            raise ControlError(f"refusing {path}: {exc}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(os.fspath(path))
            except (ConnectionRefusedError, FileNotFoundError):
                continue  # left behind by an earlier process with this pid: nobody listens
            sock.sendall(f"SNAPSHOT requested by pyflight snapshot (pid {os.getpid()})\n".encode())
            return _receive(sock, pid)
        except TimeoutError:
            raise ControlError(f"process {pid} did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"talking to process {pid} failed: {exc}") from None
        finally:
            sock.close()
    raise NoControlChannel(
        f"process {pid} has no pyflight control channel "
        "(start it with `pyflight run` or call pyflight.triggers.control.enable())"
    )


def _receive(sock: socket.socket, pid: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ControlError(f"process {pid} closed the control channel without an answer")
        line += chunk
        if len(line) > _MAX_REQUEST:
            raise ControlError(f"process {pid} sent a malformed answer")
    status, _, rest = line.decode("utf-8", "replace").strip().partition(" ")
    if status == "ERR":
        raise ControlError(f"process {pid} could not take a snapshot: {rest}")
    if status != "OK" or not rest.isdigit():
        raise ControlError(f"process {pid} sent a malformed answer")
    size = int(rest)
    chunks = []
    received = 0
    while received < size:
        chunk = sock.recv(min(1 << 20, size - received))
        if not chunk:
            raise ControlError(f"process {pid} broke off after {received} of {size} bytes")
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def write_private_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file beside it, mode 0600, rename)."""
    write_bytes_atomically(path, data)
