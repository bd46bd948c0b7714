"""Keep-alive HTTP/1.1 for the S3 client's two hot paths: small requests, and downloads.

``Pool``: small requests on bare asyncio streams. A first upload of many small files is
one small PUT per file. aiohttp spends about 0.3 ms of CPU on each beyond what the request
itself needs (its request and response objects, header multidicts, URL handling, tracing
hooks, cookie jar); measured against a bare asyncio keep-alive request, 4,000 PUTs of
2 KiB cost 414-460 us of client CPU each through aiohttp and 149-162 us bare. Beside a
trainer that CPU is the trainer's.

``FilePool``: downloads (a restore's ranged GETs) on blocking sockets in worker threads,
each written straight from the socket's buffer into the file, or, for a long body on a
plain socket, moved from the socket to the file by the kernel (splice(2) through a pipe).

What they do, and no more: one request at a time per connection, idle connections kept
per host, ``Content-Length`` request bodies sent in one write, answers framed by
``Content-Length``, ``chunked`` or the connection's end, and ``Connection: close``
honoured. ``connect_timeout`` bounds connecting; ``read_timeout`` a small request's whole
answer, and each read of a download. Every failure of the connection raises
``TransportError`` (a ``ConnectionError``), which the caller retries as it retries any
connection error; a request on a reused connection that the server had closed while idle
is sent again once on a fresh one, without a wait, as RFC 9112 section 9.3.1 allows for
idempotent methods. The S3 client keeps aiohttp for the rest: bodies over 64 KiB (their
writes watched for progress) and anything through a proxy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import fcntl
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from trialsync._util import local_files

#: Longest status line or header line accepted.
LINE_LIMIT = 2**16
#: Most header lines accepted in one answer.
HEADER_LIMIT = 128
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_NO_BODY_STATUS = frozenset({204, 304})


def request_message(
    method: str, target: str, headers: Mapping[str, str], body: bytes | memoryview = b""
) -> bytes:
    """The bytes of a request: its line, ``headers`` and ``body``."""
    head = "".join(
        [f"{method} {target} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in headers.items())]
    )
    message = head.encode("latin-1") + b"\r\n"
    return message + body if len(body) else message


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where connections go (TLS with ``ssl_context``) and how long they may wait."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    connect_timeout: float
    read_timeout: float

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def connect_error(self, exc: OSError) -> TransportError:
        """What a failed connect raises."""
        if isinstance(exc, TimeoutError):
            return TransportError(f"connecting to {self} took over {self.connect_timeout} s")
        return TransportError(f"connecting to {self}: {exc}")  # refused, DNS, TLS handshake


class TransportError(ConnectionError):
    """The connection failed, closed early or answered something that is not HTTP/1.1."""


class _Stale(TransportError):
    """A reused connection ended before any byte of the answer."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Keep-alive connections to ``endpoint``, at most ``limit`` of them open at once."""

    def __init__(self, endpoint: Endpoint, limit: int) -> None:
        self.endpoint = endpoint
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | memoryview
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """Send ``method target`` with ``headers`` (which must include ``Host``, and
        ``Content-Length`` where a body goes) and ``body``; the status, headers and body."""
        message = request_message(method, target, headers, body)
        async with self._slots:
            connection = self._take()
            if connection is not None:
                try:
                    return await self._exchange(connection, method, message, reused=True)
                except _Stale:
                    if method not in IDEMPOTENT:
                        raise
            return await self._exchange(await self._connect(), method, message, reused=False)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    # -- plumbing ----------------------------------------------------------------------

    def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        where = self.endpoint
        if self._closed:
            raise TransportError(f"the connections to {where} are closed")
        try:
            async with asyncio.timeout(where.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    where.host,
                    where.port,
                    ssl=where.ssl_context,
                    server_hostname=where.host if where.ssl_context is not None else None,
                    limit=LINE_LIMIT,
                )
        except OSError as exc:  # TimeoutError too
            raise where.connect_error(exc) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self, connection: _Connection, method: str, message: bytes, reused: bool
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        keep = False
        try:
            connection.writer.write(message)
            async with asyncio.timeout(self.endpoint.read_timeout):
                status, headers, persistent = await self._read_head(connection, reused)
                data, framed = await self._read_body(connection.reader, method, status, headers)
            keep = persistent and framed
        except TransportError:
            raise
        except TimeoutError as exc:
            raise TransportError(
                f"{self.endpoint} did not answer within {self.endpoint.read_timeout} s"
            ) from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise TransportError(f"{self.endpoint}: {exc or type(exc).__name__}") from exc
        except ValueError as exc:  # a malformed length or chunk size
            raise TransportError(f"{self.endpoint}: a malformed answer: {exc}") from exc
        finally:
            if keep and not self._closed:
                self._idle.append(connection)
            else:
                connection.close()
        return status, headers, data

    async def _read_head(
        self, connection: _Connection, reused: bool
    ) -> tuple[int, CIMultiDictProxy[str], bool]:
        reader = connection.reader
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial:
                    raise _Stale(f"{self.endpoint} closed an idle connection") from exc
                raise
            except ConnectionResetError as exc:
                if reused:
                    raise _Stale(f"{self.endpoint} reset an idle connection") from exc
                raise
            version, status = _status_line(line, str(self.endpoint))
            headers: CIMultiDict[str] = CIMultiDict()
            for _ in range(HEADER_LIMIT):
                field = await reader.readuntil(b"\r\n")
                if field == b"\r\n":
                    break
                _add_field(headers, field, str(self.endpoint))
            else:
                raise TransportError(f"{self.endpoint}: over {HEADER_LIMIT} headers")
            if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
                continue
            return status, CIMultiDictProxy(headers), _persistent(version, headers)

    async def _read_body(
        self,
        reader: asyncio.StreamReader,
        method: str,
        status: int,
        headers: CIMultiDictProxy[str],
    ) -> tuple[bytes, bool]:
        """The answer's body, and whether its end was framed (else the connection ended)."""
        if method == "HEAD" or status in _NO_BODY_STATUS:
            return b"", True
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    return b"".join(parts), True
                parts.append(await reader.readexactly(size))
                if await reader.readexactly(2) != b"\r\n":
                    raise ValueError("a chunk without its CRLF")
        count = _content_length(headers)
        if count is not None:
            return (await reader.readexactly(count) if count else b""), True
        return await reader.read(), False


# --- ranged reads into a file, on blocking sockets in threads ------------------------------

#: Bytes asked of the socket per read (a received chunk goes to the file before the next);
#: each worker thread keeps a buffer of this size for all its answers, for as long as it
#: lives (a long body is spliced, and a TLS read gives 16 KiB at most: a small one does).
RECV_CHUNK = 2**16
#: A body longer than this, on a plain socket, moves to the file by splice(2) through a
#: pipe of ``PIPE_SIZE`` bytes (the most Linux lets any process ask for by default).
SPLICE_LEAST = 2**18
PIPE_SIZE = 2**20
#: What splice(2) raises for a file or socket it cannot move pages from or to.
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


class FilePool:
    """Keep-alive blocking connections for answers written straight into a file.

    A restore downloads gigabytes: through the event loop every chunk costs a Python
    callback, a copy into a stream buffer and another into the file, all holding the GIL.
    Here each ranged GET runs in a thread, as ``recv_into`` a buffer and ``os.pwrite`` from
    it: both release the GIL, so several ranges land side by side (a prototype took
    0.93-0.96 s for 4 x 256 MiB where the event loop took 1.39-1.43 s). A body of
    ``SPLICE_LEAST`` or more on a plain socket is spliced instead: the kernel moves it from
    the socket to the file through a pipe, one copy fewer and no Python per chunk. A
    successful answer's body goes to the file at its offset; an error's is returned.
    ``read_timeout`` bounds each read, as aiohttp's ``sock_read``.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._idle: collections.deque[socket.socket] = collections.deque()
        self._closed = False
        self._buffers = threading.local()

    def fetch(self, call: Call) -> tuple[int, CIMultiDictProxy[str], bytes, int]:
        """Send ``call``'s GET; (status, headers, error body, bytes written to the file).
        Runs in a worker thread."""
        sock = self._take()
        if sock is not None:
            try:
                return self._exchange(sock, call, reused=True)
            except _Stale:
                pass
        return self._exchange(self._connect(), call, reused=False)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _take(self) -> socket.socket | None:
        while self._idle:
            try:
                sock = self._idle.pop()
            except IndexError:  # taken by another thread meanwhile
                return None
            if _idle_and_open(sock):
                return sock
            sock.close()
        return None

    def _connect(self) -> socket.socket:
        where = self.endpoint
        if self._closed:
            raise TransportError(f"the connections to {where} are closed")
        try:
            sock = socket.create_connection((where.host, where.port), where.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if where.ssl_context is not None:
                sock = where.ssl_context.wrap_socket(sock, server_hostname=where.host)
        except OSError as exc:  # TimeoutError too
            raise where.connect_error(exc) from exc
        return sock

    def _exchange(
        self, sock: socket.socket, call: Call, reused: bool
    ) -> tuple[int, CIMultiDictProxy[str], bytes, int]:
        if not call.attach(sock):
            sock.close()
            raise TransportError("cancelled")
        keep = False
        try:
            sock.settimeout(self.endpoint.read_timeout)
            buffer = getattr(self._buffers, "buffer", None)
            if buffer is None:  # a zeroed MiB per answer would cost more than a small one
                buffer = self._buffers.buffer = bytearray(RECV_CHUNK)
            reader = _BlockingReader(sock, buffer)
            try:
                sock.sendall(call.message)
                status, headers, persistent = _parse_head(reader, str(self.endpoint))
            except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
                if reused and not reader.received:
                    raise _Stale(f"{self.endpoint} closed an idle connection") from exc
                raise
            if status < 300:
                written, framed = reader.body(headers, call.write, call)
                error = b""
            else:
                parts: list[bytes] = []
                _, framed = reader.body(headers, lambda offset, view: parts.append(bytes(view)))
                error, written = b"".join(parts), 0
            keep = persistent and framed and not reader.pending
        except TransportError:
            raise
        except TimeoutError as exc:
            raise TransportError(
                f"{self.endpoint} sent nothing for {self.endpoint.read_timeout} s"
            ) from exc
        except (OSError, EOFError, ValueError) as exc:
            if call.cancelled:
                raise TransportError("cancelled") from exc
            raise TransportError(f"{self.endpoint}: {exc or type(exc).__name__}") from exc
        finally:
            call.detach()
            if keep and not self._closed and not call.cancelled:
                self._idle.append(sock)
            else:
                sock.close()
        return status, headers, error, written


def _idle_and_open(sock: socket.socket) -> bool:
    """Whether a kept-alive plain socket is still open with nothing unread (a TLS socket
    cannot be peeked at: a stale one is found when it is used, and replaced)."""
    if isinstance(sock, ssl.SSLSocket):
        return True
    sock.setblocking(False)  # with a timeout set, recv would wait for data: not a peek
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # closed by the peer, or bytes nobody asked for


class Call:
    """One GET into ``fd`` at ``offset``: the message, where its body goes, and a way to
    stop it from another thread (``cancel`` shuts its socket down; no byte is written to
    ``fd`` after it returns)."""

    def __init__(self, message: bytes, fd: int, offset: int) -> None:
        self.message = message
        self.fd = fd
        self.offset = offset
        self.cancelled = False
        #: Whether the file takes splice(2) (until it refuses one).
        self.splices = True
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def write(self, position: int, view: memoryview) -> None:
        # Under the lock, so that once cancel() returns nothing more is written: the
        # caller may close the file and its descriptor be reused.
        with self._lock:
            if self.cancelled:
                raise TransportError("cancelled")
            local_files.write_at(self.fd, view, self.offset + position)

    def write_from_pipe(self, pipe: int, count: int, position: int) -> None:
        """Move ``count`` bytes waiting in ``pipe`` to the file at ``position``: by
        splice(2), or (a file that cannot take one) read and written."""
        with self._lock:
            if self.cancelled:
                raise TransportError("cancelled")
            while count and self.splices:
                try:
                    done = os.splice(pipe, self.fd, count, offset_dst=self.offset + position)
                except OSError as exc:
                    if exc.errno not in _NO_SPLICE:
                        raise
                    self.splices = False
                    break
                count, position = count - done, position + done
            while count:
                data = os.read(pipe, count)
                local_files.write_at(self.fd, data, self.offset + position)
                count, position = count - len(data), position + len(data)

    def attach(self, sock: socket.socket) -> bool:
        with self._lock:
            self._sock = sock
            return not self.cancelled

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)


class _BlockingReader:
    """Buffered reads from a blocking socket: lines, and bodies handed on in chunks."""

    def __init__(self, sock: socket.socket, buffer: bytearray) -> None:
        self._sock = sock
        self._buffer = buffer
        self._view = memoryview(self._buffer)
        self._start = self._end = 0
        self.received = 0

    @property
    def pending(self) -> int:
        return self._end - self._start

    def _fill(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buffer):  # compact a line split at the buffer's end
            tail = bytes(self._view[self._start : self._end])
            self._view[: len(tail)] = tail
            self._start, self._end = 0, len(tail)
        got = self._sock.recv_into(self._view[self._end :])
        if not got:
            raise EOFError("the connection ended")
        self._end += got
        self.received += got

    def readline(self) -> bytes:
        while True:
            found = self._buffer.find(b"\r\n", self._start, self._end)
            if found >= 0:
                line = bytes(self._view[self._start : found + 2])
                self._start = found + 2
                return line
            if self._end - self._start >= LINE_LIMIT:
                raise ValueError("a line longer than 64 KiB")
            self._fill()

    def copy(self, count: int, sink: Callable[[int, memoryview], None], position: int) -> None:
        """Hand ``count`` bytes to ``sink(position, chunk)``, ``position`` counting on."""
        while count:
            if self._start == self._end:
                self._fill()
            take = min(count, self._end - self._start)
            sink(position, self._view[self._start : self._start + take])
            self._start += take
            position += take
            count -= take

    def splice(self, count: int, call: Call, position: int) -> None:
        """Move ``count`` bytes to ``call``'s file from ``position`` on: what is buffered
        written, the rest spliced from the socket through a pipe (one copy fewer than
        receiving and writing, and no Python per chunk)."""
        buffered = min(count, self.pending)
        if buffered:
            self.copy(buffered, call.write, position)
            count, position = count - buffered, position + buffered
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):  # a smaller pipe only means more calls
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            sock = self._sock.fileno()
            timeout = self._sock.gettimeout()
            flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
            while count:
                try:
                    moved = os.splice(sock, write_end, min(count, PIPE_SIZE), flags=flags)
                except BlockingIOError:
                    _wait_readable(sock, timeout)
                    continue
                if not moved:
                    raise EOFError("the connection ended")
                self.received += moved
                call.write_from_pipe(read_end, moved, position)
                count, position = count - moved, position + moved
        finally:
            os.close(read_end)
            os.close(write_end)

    def body(
        self,
        headers: CIMultiDictProxy[str],
        sink: Callable[[int, memoryview], None],
        call: Call | None = None,
    ) -> tuple[int, bool]:
        """The body, to ``sink`` (or, for a long one on a plain socket, spliced to
        ``call``'s file): (its length, whether its end was framed)."""
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            position = 0
            while True:
                size = int(self.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.readline() != b"\r\n":
                        pass
                    return position, True
                self.copy(size, sink, position)
                position += size
                if self.readline() != b"\r\n":
                    raise ValueError("a chunk without its CRLF")
        count = _content_length(headers)
        if count is not None:
            if call is not None and count >= SPLICE_LEAST and _splices(self._sock):
                self.splice(count, call, 0)
            else:
                self.copy(count, sink, 0)
            return count, True
        position = 0
        while True:
            try:
                if self._start == self._end:
                    self._fill()
            except EOFError:
                return position, False
            take = self._end - self._start
            sink(position, self._view[self._start : self._end])
            self._start = self._end
            position += take


def _splices(sock: socket.socket) -> bool:
    """Whether bytes can be spliced from ``sock`` (not from a TLS socket's)."""
    return not isinstance(sock, ssl.SSLSocket)


def _wait_readable(fd: int, timeout: float | None) -> None:
    """Wait until ``fd`` has bytes (or has ended) for ``timeout`` s at most (None: ever)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(None if timeout is None else timeout * 1000):
        raise TimeoutError


def _parse_head(reader: _BlockingReader, where: str) -> tuple[int, CIMultiDictProxy[str], bool]:
    while True:
        version, status = _status_line(reader.readline(), where)
        headers: CIMultiDict[str] = CIMultiDict()
        for _ in range(HEADER_LIMIT):
            field = reader.readline()
            if field == b"\r\n":
                break
            _add_field(headers, field, where)
        else:
            raise TransportError(f"{where}: over {HEADER_LIMIT} headers")
        if 100 <= status < 200:
            continue
        return status, CIMultiDictProxy(headers), _persistent(version, headers)


# --- parsing, shared ----------------------------------------------------------------------


def _status_line(line: bytes, where: str) -> tuple[bytes, int]:
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise TransportError(f"{where}: not an HTTP/1.1 answer: {line!r}")
    return version, int(code)


def _add_field(headers: CIMultiDict[str], field: bytes, where: str) -> None:
    name, sep, value = field.partition(b":")
    if not sep:
        raise TransportError(f"{where}: a bad header: {field!r}")
    headers.add(name.decode("latin-1").strip(), value.decode("latin-1").strip())


def _content_length(headers: CIMultiDictProxy[str]) -> int | None:
    """The body's length if the answer gives one (a malformed one: ValueError)."""
    length = headers.get("Content-Length")
    if length is None:
        return None
    count = int(length)
    if count < 0:
        raise ValueError(f"Content-Length {count}")
    return count


def _persistent(version: bytes, headers: CIMultiDict[str]) -> bool:
    """Whether the connection stays open after this answer."""
    return version == b"HTTP/1.1" and "close" not in headers.get("Connection", "").lower()
