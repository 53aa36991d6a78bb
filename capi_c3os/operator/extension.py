"""The Runtime SDK extension's HTTPS server (--extension-addr): thin aiohttp wiring
around capi_c3os/runtime/hooks.py.

Every replica serves (CAPI reaches whichever one the Service picks; UpdateMachine is
idempotent), from before leader election on. The serving certificate is the manager's
own (reconcilers/serving.py, kept in a Secret) unless --extension-cert-dir names files
someone else keeps (cert-manager): those are re-read when they change. The TLS context
is reloaded in place, so a renewed certificate needs no restart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from capi_c3os.operator.endpoints import parse_address, serve_app, tls_server_context
from capi_c3os.operator.handlers.infrastructure import C3OS_MACHINE, C3OS_MACHINE_TEMPLATE
from capi_c3os.reconcilers import serving
from capi_c3os.reconcilers.kube import MACHINE_SETS, MACHINES, SECRETS, Kube, warning_event
from capi_c3os.runtime import hooks, registration
from capi_c3os.scratch import process_dir
from capi_c3os.workload.client import WorkloadClients

log = logging.getLogger(__name__)

EXTENSION_CERT_SECRET = registration.EXTENSION_CERT_SECRET
EXTENSION_SERVICE = registration.EXTENSION_SERVICE
REQUEST_TIMEOUT = 5.0
"""Management API calls of one hook call: well inside CAPI's handler timeout."""
MAX_BODY = 8 * 1024**2
UNREGISTERED_RETRY_SECONDS = 60.0


def _api_message(exc: ApiException) -> str:
    """The API server's message (about our ExtensionConfig: nothing secret), else the reason."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


@dataclass(frozen=True)
class ExtensionSettings:
    address: str
    """[host]:port to serve on."""
    namespace: str
    """The manager's namespace: the certificate Secret and the Service live there."""
    cert_secret: str
    """The Secret CAPI injects the CA bundle from (ours, or cert-manager's)."""
    cert_dir: str | None = None
    """tls.crt/tls.key (and ca.crt) kept by someone else; None: the manager makes its own."""
    url: str | None = None
    """How CAPI reaches us when not through the Service (a manager outside the cluster)."""
    service: str = EXTENSION_SERVICE
    watch_namespaces: tuple[str, ...] = ()
    """The manager's --namespace: requests for Machines elsewhere are refused."""
    refresh_seconds: float = 3600.0
    """How often the certificate is checked for renewal (or, from a cert dir, re-read)."""

    @property
    def endpoint(self) -> registration.Endpoint:
        return registration.Endpoint(self.namespace, self.service, self.url)

    @property
    def hosts(self) -> tuple[str, ...]:
        if self.url:
            return (urlsplit(self.url).hostname or "",)
        return serving.service_hosts(self.service, self.namespace)


def _subject(body: Any) -> str:
    """The desired MachineSet or Machine a CanUpdate request is about, for logs."""
    desired = body.get("desired") if isinstance(body, dict) else None
    for key in ("machineSet", "machine"):
        obj = desired.get(key) if isinstance(desired, dict) else None
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict):
            return f"{key[0].upper()}{key[1:]} {meta.get('namespace')}/{meta.get('name')}"
    return "(unnamed)"


class _Reader:
    """hooks.ManagementReader over the management API."""

    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    def machine(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._kube.get(MACHINES, namespace, name)

    def c3os_machine(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._kube.get(C3OS_MACHINE, namespace, name)

    def machine_set(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._kube.get(MACHINE_SETS, namespace, name)

    def c3os_machine_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._kube.get(C3OS_MACHINE_TEMPLATE, namespace, name)

    def kubeconfig(self, namespace: str, cluster: str) -> str | None:
        secret = self._kube.get(SECRETS, namespace, f"{cluster}-kubeconfig")
        value = ((secret or {}).get("data") or {}).get("value")
        return base64.b64decode(value).decode() if value else None


class ExtensionServer:
    def __init__(self, settings: ExtensionSettings, configuration: k8s.Configuration) -> None:
        self.settings = settings
        self._api = k8s.ApiClient(configuration)  # its own pool: hook calls never queue behind reconciles
        self._kube = Kube(self._api, request_timeout=REQUEST_TIMEOUT)
        self._reader = _Reader(self._kube)
        self._workloads = WorkloadClients()
        self._ssl = tls_server_context()
        self._loaded: bytes | None = None
        self._runner: web.AppRunner | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._closed = False
        self._registered: bool | None = None

    # ------------------------------------------------------------ certificates

    def _load_certificate(self) -> bytes | None:
        """Load the current certificate into the TLS context; the CA bundle when we keep
        it ourselves (None with a cert dir). Blocking."""
        s = self.settings
        if s.cert_dir:
            cert, key = Path(s.cert_dir, "tls.crt"), Path(s.cert_dir, "tls.key")
            stamp = cert.read_bytes() + key.read_bytes()
            if stamp != self._loaded:
                self._ssl.load_cert_chain(cert, key)
                self._loaded = stamp
                log.info("extension serving certificate loaded from %s", s.cert_dir)
            return None
        material = registration.ensure_serving_secret(self._kube, s.namespace, s.cert_secret, s.hosts)
        stamp = material.serving.cert_pem
        if stamp != self._loaded:
            # load_cert_chain takes files: ours, in this process's private directory.
            directory = process_dir("capi-c3os-extension-")
            cert, key = Path(directory, "tls.crt"), Path(directory, "tls.key")
            for path, data in ((cert, material.serving.cert_pem), (key, material.serving.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            self._ssl.load_cert_chain(cert, key)
            self._loaded = stamp
        return material.ca_bundle

    def _register(self, ca_bundle: bytes | None) -> None:
        s = self.settings
        body = registration.extension_config(
            s.endpoint, (s.namespace, s.cert_secret), ca_bundle, s.watch_namespaces
        )
        try:
            registration.apply_extension_config(self._kube, body)
        except ApiException as exc:
            if exc.status not in (403, 404):
                raise
            # 404: no CAPI core (its ExtensionConfig CRD); 403: CAPI's webhook refuses every
            # ExtensionConfig while its RuntimeSDK gate is off (or our RBAC lacks it). The
            # manager runs on without in-place upgrades and tries again soon.
            self._registered = False
            log.warning(
                "the extension is not registered (ExtensionConfig %s: %s %s; does CAPI core run with "
                "RuntimeSDK=true,InPlaceUpdates=true?); trying again in %.0fs",
                registration.EXTENSION_CONFIG_NAME, exc.status, _api_message(exc), self._retry_seconds,
            )  # fmt: skip
            return
        if not self._registered:
            log.info("extension registered: ExtensionConfig %s", registration.EXTENSION_CONFIG_NAME)
        self._registered = True

    @property
    def _retry_seconds(self) -> float:
        return min(self.settings.refresh_seconds, UNREGISTERED_RETRY_SECONDS)

    def _refresh_once(self) -> None:
        self._register(self._load_certificate())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_seconds if self._registered else self._retry_seconds)
            try:
                await asyncio.to_thread(self._refresh_once)
            except Exception:
                log.exception(
                    "refreshing the extension's certificate or ExtensionConfig failed; retrying later"
                )

    # ------------------------------------------------------------ serving

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(hooks.DISCOVERY_PATH, self._wrap("Discovery", hooks.discovery))
        pure: dict[str, Callable[[Any], dict[str, Any]]] = {
            "CanUpdateMachineSet": hooks.can_update_machine_set,
            "CanUpdateMachine": hooks.can_update_machine,
        }
        for handler in hooks.HANDLERS:
            fn = pure.get(handler.hook, self._update_machine)
            app.router.add_post(hooks.hook_path(handler.hook, handler.name), self._wrap(handler.hook, fn))
        return app

    def _update_machine(self, request: Any) -> dict[str, Any]:
        return hooks.update_machine(
            request, self._reader, self._workloads.get, self.settings.watch_namespaces, self._report_failure
        )

    def _report_failure(self, machine: dict[str, Any], message: str) -> None:
        """A Warning Event on the Machine (`kubectl describe machine`), where CAPI's own
        condition only says "UpdateMachine hook failed"."""
        warning_event(self._kube, {"kind": "Machine", **machine}, "InPlaceUpdateFailed", message)

    def _wrap(self, hook: str, fn: Callable[[Any], dict[str, Any]]) -> Any:
        async def handle(request: web.Request) -> web.Response:
            try:
                body = json.loads(await request.read()) if request.can_read_body else None
            except (ValueError, UnicodeDecodeError):
                return web.json_response(hooks.failure(hook, "the request body is not JSON"), status=400)
            if hook != "Discovery" and not isinstance(body, dict):
                return web.json_response(
                    hooks.failure(hook, "the request body must be a JSON object"), status=400
                )
            try:
                # Blocking work (API calls) off the event loop; pure hooks are quick either way.
                answer = await asyncio.to_thread(fn, body)
            except Exception:
                log.exception("%s handler failed", hook)
                answer = hooks.failure(hook, f"{hook} failed inside capi-c3os: see the manager's log")
            if hook.startswith("CanUpdate") and answer.get("message"):
                # CAPI logs its own diff, not our reason: say it here (CAPI caches the answer).
                log.info("%s %s: %s", hook, _subject(body), answer["message"])
            return web.json_response(answer)

        return handle

    async def start(self) -> ExtensionServer:
        bind = parse_address(self.settings.address)
        if bind is None:
            raise ValueError("the extension needs an address")
        try:
            await self._serve(bind)
        except BaseException:
            await self.cleanup()
            raise
        self._refresh = asyncio.create_task(self._refresh_forever())
        log.info("Runtime SDK extension serving on %s", self.settings.address)
        return self

    async def _serve(self, bind: tuple[str, int]) -> None:
        await asyncio.to_thread(self._refresh_once)
        self._runner = await serve_app(self._app(), bind, self._ssl)

    async def cleanup(self) -> None:
        """Stop serving (named like AppRunner's, for endpoints.stop_servers); idempotent."""
        refresh, self._refresh = self._refresh, None
        runner, self._runner = self._runner, None
        if refresh is not None:
            refresh.cancel()
        if runner is not None:
            await runner.cleanup()
        self._workloads.close_all()
        if not self._closed:
            self._closed = True
            self._api.close()
