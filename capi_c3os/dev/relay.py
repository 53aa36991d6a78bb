"""A TCP relay from inside a network namespace the test run made to a port on the host's
loopback. VMs of the private libvirtd live in its network namespace (its bridge is
192.168.150.1) and cannot reach the host's 127.0.0.1, where the manager's enrollment
endpoint listens: the relay listens at an address inside the namespace and connects
each client to the endpoint. TLS passes through untouched: the host's agent pins the
endpoint's CA end to end, so the relay sees nothing but ciphertext (the endpoint's
serving certificate must name the relay's address: `--enrollment-name`).

The listening socket is made by a thread that has entered the namespace (setns changes
the calling thread's namespace only, and a socket stays in the namespace it was made
in); connections to the endpoint are made in the host's. Every client appears to the
endpoint as 127.0.0.1 (its rate limit counts them together)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def listen_in(netns: Path, address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket at `address` inside the network namespace `netns`
    (e.g. /proc/<pid>/ns/net), made by a short-lived thread of its own."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            with open(netns, "rb") as target:
                _setns(target.fileno())  # this thread only; it ends right after
            made.append(socket.create_server(address, reuse_port=False))
        except BaseException as exc:
            made.append(exc)

    thread = threading.Thread(target=make, name="relay-listen")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


class Relay:
    """Accepts inside the namespace, connects to `target` on the host's loopback."""

    def __init__(self, netns: Path, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.netns, self.listen, self.target = netns, listen, target
        self._server: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> Relay:
        self._server = listen_in(self.netns, self.listen)
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the endpoint is down: the agent sees a reset and retries
                continue
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(
                target=self._serve, args=(client, upstream), name="relay-conn", daemon=True
            ).start()

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        back = threading.Thread(target=_pump, args=(upstream, client), name="relay-back", daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        with self._lock:
            for sock in (client, upstream):
                self._open.discard(sock)
                sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)  # pass the half-close on
    except OSError:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)
