"""Fetching a machine image onto the manager (the libvirt backend copies images itself):
bounded in size and time, `file://` only under directories the manager's flags allow,
and never a word about the bytes read beyond "matches" or "does not match" the checksum
the user gave (a digest or an excerpt would make the manager an oracle on its own files).

A killed manager leaves its scratch directory behind; the next download removes it (a
lock held while a directory is in use tells live ones from leftovers).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from capi_c3os import scratch
from capi_c3os.api.infrastructure import MachineImage
from capi_c3os.backends.base import BackendError

GIB = 1024**3
MIB = 1024**2
_CHUNK = 1024 * 1024
SCRATCH_PREFIX = "capi-c3os-image-"
SOCKET_TIMEOUT = 30.0
"""Seconds one network read may take; the overall deadline is checked between reads."""
TIMEOUT_RETRY = 300.0


@dataclass(frozen=True)
class ImageLimits:
    """What the manager lets an image URL cost it (flags of `capi-c3os run`)."""

    max_bytes: int = 32 * GIB
    deadline: float = 7200.0
    """Seconds a whole download may take."""
    file_dirs: tuple[str, ...] = ()
    """`file://` URLs only under these directories; none: `file://` is refused."""


LIMITS = ImageLimits()
"""The manager's limits; `configure` sets them from its flags before any reconcile."""


def configure(limits: ImageLimits) -> None:
    global LIMITS  # noqa: PLW0603 - set once at start, like logging
    LIMITS = limits


def shown(url: str) -> str:
    """The URL for messages: without user info, query and fragment (a presigned URL's
    signature or a password is no one's business in a condition)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def size_text(size: int) -> str:
    if size >= GIB:
        return f"{size / GIB:.1f}".rstrip("0").rstrip(".") + " GiB"
    return f"{size // MIB} MiB"


@dataclass
class Download:
    """One base image being fetched in the background, and what came of it."""

    url: str
    received: int = 0
    total: int | None = None
    """Declared size (Content-Length, file size), when known."""
    uploading: bool = False
    error: BackendError | None = None
    finished_at: float | None = None
    waiting: set[tuple[str, str]] = field(default_factory=set)
    """(namespace, name) of the machines to wake when it ends."""
    done: threading.Event = field(default_factory=threading.Event)

    def progress(self, received: int, total: int | None) -> None:
        self.received, self.total = received, total

    def message(self, where: str) -> str:
        """Coarse on purpose: the message is the Ready condition's, and a figure that
        changed on every requeue would be a status write on every requeue."""
        url = shown(self.url)
        if self.uploading:
            return f"image {url} downloaded and verified; copying it into {where}"
        if self.total:
            step = min(90, self.received * 100 // self.total // 10 * 10)
            return f"downloading image {url} for {where}: {step} % of {size_text(self.total)}"
        if self.received < GIB:
            return f"downloading image {url} for {where}: less than 1 GiB so far"
        power = 1 << (self.received // GIB).bit_length() - 1
        return f"downloading image {url} for {where}: over {power} GiB so far"


def fetch(
    image: MachineImage,
    path: str,
    limits: ImageLimits,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[int, int]:
    """Fetch the image to `path` and check its digest; (file size, virtual size). Stops
    at `limits.max_bytes` (or the size the source declares) and at `limits.deadline`;
    the caller removes `path` on error."""
    assert image.url is not None and image.checksum is not None
    url = shown(image.url)
    deadline = time.monotonic() + limits.deadline
    source, total = _open(image.url, limits)
    if total is not None and total > limits.max_bytes:
        source.close()
        raise _too_large(url, limits, total)
    cap = limits.max_bytes if total is None else total
    digest = hashlib.new(image.checksum_algorithm)
    size = 0
    header = b""
    try:
        with source, open(path, "wb") as out:
            while True:
                if time.monotonic() > deadline:
                    raise _timed_out(url, limits, size)
                chunk = source.read1(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    raise _too_large(url, limits, None) if total is None else _short(url)
                if len(header) < 32:
                    header += chunk[:32]
                digest.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(size, total)
    except TimeoutError:
        if time.monotonic() > deadline:
            raise _timed_out(url, limits, size) from None
        raise BackendError(
            "ImageDownloadFailed", f"cannot fetch {url}: no data for {SOCKET_TIMEOUT:.0f} s", 60.0
        ) from None
    except OSError as exc:
        raise BackendError("ImageDownloadFailed", f"cannot fetch {url}: {_reason(exc)}", 60.0) from None
    if total is not None and size != total:
        raise _short(url)
    if digest.hexdigest() != image.checksum:
        raise BackendError(
            "ImageChecksumMismatch",
            f"image {url}: expected {image.checksum_algorithm}:{image.checksum[:16]}…, "
            "the downloaded file does not match",
            retry_after=None,
        )
    virtual = size
    if image.format == "qcow2":
        if header[:4] != b"QFI\xfb":
            raise BackendError("ImageFormatMismatch", f"image {url} is not qcow2", retry_after=None)
        virtual = struct.unpack(">Q", header[24:32])[0]
    return size, virtual


def _open(url: str, limits: ImageLimits) -> tuple[io.BufferedIOBase, int | None]:
    """The source to read and its declared size."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return _open_file(parts, limits)
    if parts.scheme not in ("http", "https"):
        raise _refused(f"image {shown(url)}: only http, https and file URLs are fetched")
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _HttpRedirects(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    try:
        resp = opener.open(url, timeout=min(SOCKET_TIMEOUT, limits.deadline))
    except TimeoutError:
        raise BackendError("ImageDownloadFailed", f"cannot fetch {shown(url)}: timed out", 60.0) from None
    except OSError as exc:
        raise BackendError(
            "ImageDownloadFailed", f"cannot fetch {shown(url)}: {_reason(exc)}", 60.0
        ) from None
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    return resp, total


class _HttpRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects stay on http/https (urllib would follow one to ftp)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a scheme other than http(s)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open_file(parts: urllib.parse.SplitResult, limits: ImageLimits) -> tuple[io.BufferedIOBase, int]:
    url = urllib.parse.urlunsplit(parts)
    if not limits.file_dirs:
        raise _refused(f"image {url}: file:// URLs are off in this manager (see --image-file-dir)")
    if parts.netloc not in ("", "localhost"):
        raise _refused(f"image {url}: a file:// URL must name no host")
    allowed = [os.path.realpath(d) for d in limits.file_dirs]
    outside = _refused(f"image {url}: not under a directory the manager allows (--image-file-dir)")
    # Lexically first (no look at the file system for what is plainly outside), then
    # with symlinks and `..` resolved, then what was really opened.
    path = os.path.normpath(urllib.request.url2pathname(parts.path))
    if not os.path.isabs(path) or not _under(path, allowed):
        raise outside
    real = os.path.realpath(path)
    if not _under(real, allowed):
        raise outside
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError("ImageDownloadFailed", f"cannot read {url}: {_reason(exc)}", 60.0) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refused(f"image {url} is not a regular file")
        if not _under(os.path.realpath(f"/proc/self/fd/{fd}"), allowed):
            raise outside  # swapped for a symlink between the checks and the open
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "rb"), info.st_size


def _under(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _reason(exc: OSError) -> str:
    """An error without the file name (the message names the URL already)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return exc.strerror or type(exc).__name__


def _refused(message: str) -> BackendError:
    return BackendError("ImageURLRefused", message, retry_after=None)


def _too_large(url: str, limits: ImageLimits, declared: int | None) -> BackendError:
    what = f"declares {size_text(declared)}, more" if declared is not None else "is larger"
    return BackendError(
        "ImageTooLarge",
        f"image {url} {what} than the manager's limit of {size_text(limits.max_bytes)} (--image-max-size)",
        retry_after=None,
    )


def _short(url: str) -> BackendError:
    return BackendError(
        "ImageDownloadFailed", f"image {url}: the size read differs from the size declared", 60.0
    )


def _timed_out(url: str, limits: ImageLimits, size: int) -> BackendError:
    return BackendError(
        "ImageDownloadTimeout",
        f"image {url}: not downloaded within {limits.deadline:.0f} s (--image-download-timeout; "
        f"{size_text(size)} received)",
        retry_after=TIMEOUT_RETRY,
    )


@contextmanager
def scratch_dir() -> Iterator[str]:
    """A private directory for one download, removed afterwards (and by a later download
    when this process dies first)."""
    with scratch.scratch_dir(SCRATCH_PREFIX) as tmp:
        yield tmp


def sweep(root: str | None = None) -> None:
    """Remove the download directories of dead managers."""
    scratch.sweep(SCRATCH_PREFIX, root)
