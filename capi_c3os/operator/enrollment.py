"""The enrollment endpoint (`--enrollment-addr`): HTTPS where self-enrolling hosts
register, fetch their assignment and report progress. Transport only; every decision
is in reconcilers/enrollment.py, run off the event loop.

    POST /enrollment/v1/namespaces/{ns}/pools/{pool}/hosts          Bearer <site token>
         {"hardware": {...facts...}} -> {"namespace","name","credential","accepted",...}
    GET  /enrollment/v1/namespaces/{ns}/hosts/{name}/assignment     Bearer <host credential>
         -> {"action": "wait"|"install"|"run"|"reset", ...}
    POST /enrollment/v1/namespaces/{ns}/hosts/{name}/reports        Bearer <host credential>
         {"event": ..., "id": <claim or reset id>, "message": ...} -> 204

The serving certificate is signed by a CA kept in a Secret of the manager's namespace
(hosts pin it) and re-issued before it expires. Refusals are uniform: 401 with the same
body for a bad token, a bad credential, an unknown host, pool or namespace. Bodies are
limited in size, clients in request rate (per address). Nothing of a request's
Authorization header or body reaches a log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from capi_c3os.api.hosts import HostHardware
from capi_c3os.backends.enrolled.pool import REPORTS
from capi_c3os.bootstrap.certificates import KeyPair
from capi_c3os.operator.endpoints import parse_address, serve_app, tls_server_context
from capi_c3os.reconcilers import enrollment, serving
from capi_c3os.reconcilers.kube import ConflictError, Kube

log = logging.getLogger(__name__)

PREFIX = "/enrollment/v1"
MAX_BODY = 64 * 1024
"""Bytes a request body may have: facts of a large server fit in a few KiB."""
CA_SECRET = "capi-c3os-enrollment-ca"
"""Default name of the CA Secret, in the manager's namespace."""
RENEW_CHECK = 3600.0
"""Seconds between checks whether the serving certificate needs renewal."""
_NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_UNAUTHORIZED = {"error": "unauthorized"}
_PRINTABLE = re.compile(r"[^ -~]")


@dataclass(frozen=True)
class EnrollmentConfig:
    address: str
    """`host:port` to serve on; "0" or "" = off."""
    names: tuple[str, ...] = ()
    """DNS names and IP addresses in the serving certificate (what hosts connect to)."""
    ca_namespace: str = "default"
    ca_secret: str = CA_SECRET
    namespaces: tuple[str, ...] = ()
    """Namespaces served; empty = all (as the manager's --namespace)."""
    rate: float = 5.0
    """Requests per second per client address (bursts of ten times as many)."""


class _Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hardware: HostHardware


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str = Field(min_length=1, max_length=32)
    id: str = Field(min_length=1, max_length=64)
    message: str = Field("", max_length=4096)


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimit:
    """A token bucket per client address; old buckets are dropped as they refill."""

    rate: float
    burst: float
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, client: str, now: float) -> bool:
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) > 10000:  # bounded memory under a flood of addresses
                self.buckets = {k: b for k, b in self.buckets.items() if now - b.at < self.burst / self.rate}
            bucket = self.buckets[client] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True


HostChanged = Callable[[str, str], None]
"""(namespace, C3osMachine name): a host's report moved that machine's claim."""


class EnrollmentServer:
    def __init__(self, kube: Kube, config: EnrollmentConfig, host_changed: HostChanged | None = None) -> None:
        self._kube = kube
        self._config = config
        self._host_changed = host_changed
        self._limit = RateLimit(config.rate, config.rate * 10)
        self._runner: web.AppRunner | None = None
        self._ssl: ssl.SSLContext | None = None
        self._ca: KeyPair | None = None
        self._leaf: KeyPair | None = None
        self._renewal: asyncio.Task[None] | None = None

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> bool:
        bind = parse_address(self._config.address)
        if bind is None:
            return False
        self._ca = await asyncio.to_thread(
            serving.ensure_ca,
            self._kube,
            self._config.ca_namespace,
            self._config.ca_secret,
            "capi-c3os enrollment",
        )
        self._ssl = tls_server_context()
        self._renew()
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        app.router.add_post(PREFIX + "/namespaces/{namespace}/pools/{pool}/hosts", self._register)
        app.router.add_get(PREFIX + "/namespaces/{namespace}/hosts/{name}/assignment", self._assignment)
        app.router.add_post(PREFIX + "/namespaces/{namespace}/hosts/{name}/reports", self._report)
        self._runner = await serve_app(app, bind, self._ssl)
        self._renewal = asyncio.ensure_future(self._keep_renewed())
        log.info("enrollment endpoint serving on %s", self._config.address)
        return True

    async def stop(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def _renew(self) -> None:
        assert self._ca is not None and self._ssl is not None
        leaf = serving.serving_certificate(self._ca, self._config.names or ("localhost", "127.0.0.1"))
        # The ssl module loads keys from files only: a private temporary file, gone at once.
        fd, path = tempfile.mkstemp(prefix="enrollment-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(leaf.cert_pem + self._ca.cert_pem + leaf.key_pem)
            self._ssl.load_cert_chain(path)  # new handshakes use it; open connections keep theirs
        finally:
            os.unlink(path)
        self._leaf = leaf

    async def _keep_renewed(self) -> None:
        while True:
            await asyncio.sleep(RENEW_CHECK)
            assert self._leaf is not None
            if serving.needs_renewal(self._leaf, dt.datetime.now(dt.UTC)):
                try:
                    self._renew()
                except Exception as exc:
                    log.error("renewing the enrollment serving certificate failed: %s", type(exc).__name__)

    # --- requests ----------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Rate limit, uniform refusals, and no detail of an unexpected failure (it could
        carry what the request carried)."""
        if not self._limit.allow(request.remote or "", time.monotonic()):
            return web.json_response({"error": "too many requests"}, status=429, headers={"Retry-After": "1"})
        try:
            return await handler(request)
        except enrollment.DeniedError as exc:
            log.info("enrollment refused (%s): %s", request.path.split("/")[-1], exc)
            return web.json_response(_UNAUTHORIZED, status=401)
        except web.HTTPException as exc:
            if exc.status == 413:
                return web.json_response({"error": f"body larger than {MAX_BODY} bytes"}, status=413)
            if exc.status in (404, 405):
                return web.json_response(_UNAUTHORIZED, status=401)  # unknown paths tell nothing either
            raise
        except ConflictError:
            return web.json_response({"error": "busy, try again"}, status=503, headers={"Retry-After": "1"})
        except Exception as exc:
            log.error("enrollment request failed: %s", type(exc).__name__)
            return web.json_response({"error": "internal error"}, status=500)

    def _served(self, namespace: str) -> None:
        if not re.match(_DNS_LABEL, namespace) or (
            self._config.namespaces and namespace not in self._config.namespaces
        ):
            raise enrollment.DeniedError(f"namespace {namespace[:63]!r} is not served")

    @staticmethod
    def _bearer(request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value or len(value) > 512:
            raise enrollment.DeniedError("no bearer token")
        return value

    @staticmethod
    def _json(raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(
                text='{"error": "body is not JSON"}', content_type="application/json"
            ) from None

    async def _register(self, request: web.Request) -> web.Response:
        namespace, pool_name = request.match_info["namespace"], request.match_info["pool"]
        token = self._bearer(request)
        self._served(namespace)
        if not re.match(_DNS_LABEL, pool_name):
            raise enrollment.DeniedError("pool name invalid")
        raw = await request.read()  # within MAX_BODY
        # Authenticate before judging the body: a caller without a token learns nothing.
        admission = await asyncio.to_thread(enrollment.admit, self._kube, namespace, pool_name, token)
        try:
            facts = _Registration.model_validate(self._json(raw))
        except ValidationError as exc:
            return _invalid(exc)
        now = dt.datetime.now(dt.UTC)
        done = await asyncio.to_thread(enrollment.register, self._kube, admission, facts.hardware, now)
        base = f"{PREFIX}/namespaces/{done.namespace}/hosts/{done.name}"
        return web.json_response(
            {
                "namespace": done.namespace,
                "name": done.name,
                "credential": done.credential,
                "accepted": done.accepted,
                "assignment": f"{base}/assignment",
                "reports": f"{base}/reports",
                "pollSeconds": enrollment.POLL_SECONDS,
            },
            status=200,
        )

    async def _host(self, request: web.Request) -> Any:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        credential = self._bearer(request)
        self._served(namespace)
        if not re.match(_NAME, name):
            raise enrollment.DeniedError("host name invalid")
        return await asyncio.to_thread(enrollment.authenticate, self._kube, namespace, name, credential)

    async def _assignment(self, request: web.Request) -> web.Response:
        host = await self._host(request)
        answer = await asyncio.to_thread(enrollment.assignment, self._kube, host)
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    async def _report(self, request: web.Request) -> web.Response:
        host = await self._host(request)
        try:
            report = _Report.model_validate(self._json(await request.read()))
        except ValidationError as exc:
            return _invalid(exc)
        if report.event not in REPORTS:
            return web.json_response({"error": f"event must be one of {', '.join(REPORTS)}"}, status=400)
        message = _PRINTABLE.sub(" ", report.message)[:1024]
        now = dt.datetime.now(dt.UTC)
        try:
            machine = await asyncio.to_thread(
                enrollment.report, self._kube, host, report.event, report.id, message, now
            )
        except enrollment.StaleError:
            return web.json_response({"error": "the host holds no such claim or reset"}, status=409)
        except enrollment.UnfittingError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        if machine and self._host_changed is not None:
            self._host_changed(str(host.metadata.namespace), machine)
        return web.Response(status=204)


def _invalid(exc: ValidationError) -> web.Response:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
    return web.json_response({"error": f"invalid body: {problems}"}, status=400)
