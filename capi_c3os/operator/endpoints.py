"""The manager's two small HTTP servers: probes (--health-addr) and Prometheus
metrics (--metrics-addr). They run on the manager's event loop, so a wedged loop
fails liveness, and both keep serving while this replica is a standby. Also how every
endpoint of the manager is served (serve_app), the HTTPS ones (the Runtime SDK extension,
the enrollment endpoint) with a tls_server_context."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

Check = Callable[[], Awaitable[bool]]


def parse_address(address: str) -> tuple[str, int] | None:
    """`:9440` -> all interfaces; `127.0.0.1:9440`; `[::1]:9440`; `0` -> disabled
    (controller-runtime's convention for these flags)."""
    if address in ("0", ""):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be [host]:port, got {address!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


async def _probe(check: Check, name: str) -> web.Response:
    ok = await check()
    return web.Response(status=200 if ok else 503, text=f"{name}: {'ok' if ok else 'not ok'}\n")


async def serve_probes(address: str, live: Check, ready: Check) -> web.AppRunner | None:
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return await _probe(live, "healthz")

    async def readyz(_: web.Request) -> web.Response:
        return await _probe(ready, "readyz")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return await _serve(app, address)


async def serve_metrics(address: str) -> web.AppRunner | None:
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        # Rendering is cheap CPU work on in-memory values; no need to leave the loop.
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
    return await _serve(app, address)


async def _serve(app: web.Application, address: str) -> web.AppRunner | None:
    bind = parse_address(address)
    if bind is None:
        return None
    return await serve_app(app, bind)


def tls_server_context() -> ssl.SSLContext:
    """A server context without a certificate yet (load_cert_chain adds it, and again on
    renewal: new handshakes use the new one, open connections keep theirs)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def serve_app(
    app: web.Application, bind: tuple[str, int], ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Serve `app` on `bind` (no access log: requests may carry secrets); nothing is left
    running when it cannot start."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, bind[0], bind[1], ssl_context=ssl_context, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class Server(Protocol):
    async def cleanup(self) -> None: ...


async def stop_servers(*runners: Server | None) -> None:
    await asyncio.gather(*(r.cleanup() for r in runners if r is not None), return_exceptions=True)
