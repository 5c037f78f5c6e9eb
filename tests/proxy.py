"""A TCP proxy in front of the private redis-server that can lose a reply.

`cut_next_exec()` arms it: the next client write holding MULTI ... EXEC is forwarded,
the server's reply is read (so the transaction has run) and dropped, and the client's
connection is closed. The client sees a dropped connection for a commit that happened:
the "ambiguous EXEC" of SPEC section 5. `cut_next(*markers, keep=n)` does the same to the
next write holding all of `markers`, passing on the first `n` bytes of the reply.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self


class CuttingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed: tuple[bytes, ...] = ()
        self._keep = 0
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut_next_exec(self) -> None:
        self.cut_next(b"MULTI", b"EXEC")

    def cut_next(self, *markers: bytes, keep: int = 0) -> None:
        with self._lock:
            self._armed, self._keep = markers, keep

    def __enter__(self) -> Self:
        self._spawn(self._accept)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        with self._lock:
            for sock in [self._listener, *self._sockets]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            cut: list[int] = []  # set: the bytes of the reply still to pass on
            self._spawn(self._upstream, self._track(client), self._track(server), cut)
            self._spawn(self._downstream, server, client, cut)

    def _upstream(self, client: socket.socket, server: socket.socket, cut: list[int]) -> None:
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                with self._lock:
                    if self._armed and all(marker in chunk for marker in self._armed):
                        self._armed = ()
                        cut.append(self._keep)
                server.sendall(chunk)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def _downstream(self, server: socket.socket, client: socket.socket, cut: list[int]) -> None:
        with contextlib.suppress(OSError):
            while chunk := server.recv(65536):
                if cut:  # the whole batch ran; its reply (but `keep` bytes) never arrives
                    self.cuts += 1
                    client.sendall(chunk[: cut[0]])
                    break
                client.sendall(chunk)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
