"""Image download bounds against a real HTTP server on 127.0.0.1 and real files: a size
cap and a deadline enforced while streaming, `file://` only under allowed directories,
and no computed digest in any message."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capi_c3os.api.infrastructure import MachineImage
from capi_c3os.backends import images
from capi_c3os.backends.base import BackendError
from capi_c3os.backends.images import ImageLimits, fetch, scratch_dir

Body = Callable[[http.server.BaseHTTPRequestHandler], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Body], str]]:
    """An HTTP server on 127.0.0.1 whose GET runs `body`; its URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(body: Body) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    body(self)  # the client giving up is what the tests want

            def log_message(self, *_args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/image.raw"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def forever(handler: http.server.BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.end_headers()  # no Content-Length: the body ends when the server says so
    block = b"\0" * 65536
    while True:
        handler.wfile.write(block)


def trickle(handler: http.server.BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(1 << 30))
    handler.end_headers()
    while True:
        handler.wfile.write(b"\0")
        handler.wfile.flush()
        time.sleep(0.05)


def raw(url: str, data: bytes = b"") -> MachineImage:
    return MachineImage(url=url, checksum=hashlib.sha256(data).hexdigest(), format="raw")


def failed_fetch(image: MachineImage, limits: ImageLimits) -> BackendError:
    """Fetch into a scratch directory as the backend does; the error, after checking
    nothing of the download is left."""
    with pytest.raises(BackendError) as err, scratch_dir() as tmp:
        left = tmp
        fetch(image, os.path.join(tmp, "image"), limits)
    assert not os.path.exists(left)
    return err.value


def test_a_server_that_streams_forever_hits_the_size_cap(serve: Callable[[Body], str]) -> None:
    error = failed_fetch(raw(serve(forever)), ImageLimits(max_bytes=4 * images.MIB))
    assert error.reason == "ImageTooLarge" and error.retry_after is None
    assert "4 MiB" in error.message and "--image-max-size" in error.message


def test_a_declared_size_over_the_cap_is_refused_before_reading(serve: Callable[[Body], str]) -> None:
    error = failed_fetch(raw(serve(trickle)), ImageLimits(max_bytes=4 * images.MIB))
    assert error.reason == "ImageTooLarge" and "declares 1 GiB" in error.message


def test_a_server_that_trickles_hits_the_deadline(serve: Callable[[Body], str]) -> None:
    error = failed_fetch(raw(serve(trickle)), ImageLimits(deadline=1.0))
    assert error.reason == "ImageDownloadTimeout" and error.retry_after
    assert "--image-download-timeout" in error.message


def test_http_image_is_fetched_and_its_credentials_stay_out_of_messages(
    serve: Callable[[Body], str], tmp_path: Path
) -> None:
    data = b"an image" * 1000

    def body(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    url = serve(body) + "?sig=s3cret"
    assert fetch(raw(url, data), str(tmp_path / "image"), ImageLimits()) == (len(data), len(data))
    wrong = MachineImage(url=url, checksum="a" * 64, format="raw")
    error = failed_fetch(wrong, ImageLimits())
    assert error.reason == "ImageChecksumMismatch"
    assert "s3cret" not in error.message
    assert hashlib.sha256(data).hexdigest()[:8] not in error.message


def test_messages_name_urls_without_user_info_or_query() -> None:
    assert images.shown("https://u:hunter2@host:8443/a/b.qcow2?sig=x#y") == "https://host:8443/a/b.qcow2"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/shadow",
        "file:///etc/passwd",
        "file:///dev/zero",
        "file://{allowed}/../../etc/passwd",
        "file://{allowed}/link-to-passwd",
        "file://{allowed}/sub/../../../etc/passwd",
        "file://{allowed}/%2e%2e/%2e%2e/etc/passwd",
        "file://localhost/etc/shadow",
    ],
)
def test_file_urls_outside_the_allowed_directory_are_refused_without_a_digest(
    tmp_path: Path, url: str
) -> None:
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "sub").mkdir()
    (allowed / "link-to-passwd").symlink_to("/etc/passwd")
    image = MachineImage(url=url.format(allowed=allowed), checksum="0" * 64, format="raw")
    for limits in (ImageLimits(), ImageLimits(file_dirs=(str(allowed),))):
        error = failed_fetch(image, limits)
        assert error.reason == "ImageURLRefused" and error.retry_after is None
        assert "--image-file-dir" in error.message
        assert "sha256:0000" not in error.message and "got" not in error.message


def test_devices_and_fifos_are_refused_as_not_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, allowed in (("/dev/zero", "/dev"), (str(fifo), str(tmp_path))):
        image = MachineImage(url=f"file://{path}", checksum="0" * 64, format="raw")
        error = failed_fetch(image, ImageLimits(file_dirs=(allowed,)))
        assert error.reason == "ImageURLRefused" and "not a regular file" in error.message


def test_an_allowed_file_is_fetched_and_a_mismatch_shows_no_digest(tmp_path: Path) -> None:
    allowed = tmp_path / "images"
    allowed.mkdir()
    data = os.urandom(100_000)
    (allowed / "base.raw").write_bytes(data)
    limits = ImageLimits(file_dirs=(str(allowed),))
    image = raw((allowed / "base.raw").as_uri(), data)
    assert fetch(image, str(tmp_path / "copy"), limits) == (len(data), len(data))
    assert (tmp_path / "copy").read_bytes() == data
    error = failed_fetch(MachineImage(url=image.url, checksum="ab" * 32, format="raw"), limits)
    assert error.reason == "ImageChecksumMismatch"
    assert "sha256:abababababababab…" in error.message and "does not match" in error.message
    assert hashlib.sha256(data).hexdigest()[:8] not in error.message


def test_a_redirect_to_a_file_url_is_not_followed(serve: Callable[[Body], str]) -> None:
    def body(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", "file:///etc/passwd")
        handler.end_headers()

    error = failed_fetch(raw(serve(body)), ImageLimits(file_dirs=("/",)))
    assert error.reason == "ImageDownloadFailed" and "302" in error.message


def test_other_schemes_are_refused() -> None:
    for url in ("ftp://127.0.0.1/x", "data:,hello"):
        assert failed_fetch(
            MachineImage.model_construct(url=url, checksum="0" * 64), ImageLimits()
        ).reason == ("ImageURLRefused")


def test_scratch_directories_of_dead_managers_are_swept_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / (images.SCRATCH_PREFIX + "dead")
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "image").write_bytes(b"half")
    with scratch_dir() as live:
        images.sweep(os.path.dirname(live))
        images.sweep(str(tmp_path))
        assert os.path.isdir(live)
    assert not dead.exists()


def test_a_killed_downloads_scratch_directory_is_removed_by_the_next_download(
    serve: Callable[[Body], str], tmp_path: Path
) -> None:
    """The manager SIGKILLed mid-download: its partial file stays behind until the next
    download of any manager sharing the temp directory sweeps it."""
    url = serve(trickle)
    script = (
        "import sys, tempfile; tempfile.tempdir = sys.argv[1]\n"
        "from capi_c3os.backends.images import ImageLimits, fetch, scratch_dir\n"
        "from capi_c3os.api.infrastructure import MachineImage\n"
        "image = MachineImage(url=sys.argv[2], checksum='0' * 64, format='raw')\n"
        "with scratch_dir() as tmp:\n"
        "    fetch(image, tmp + '/image', ImageLimits())\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), url])
    try:
        for _ in range(600):
            partial = list(tmp_path.glob(images.SCRATCH_PREFIX + "*/image"))
            if partial:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the child never started writing")
        images.sweep(str(tmp_path))
        assert partial[0].exists(), "a live download's directory was swept"
    finally:
        child.kill()
        child.wait()
    images.sweep(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
