"""The libvirt backend: a machine is a domain, a copy-on-write disk and a config drive.

Every step finds before it creates, so a provision repeated after a crash at any line
adopts what the earlier run made and makes no duplicate:

1. check what does not heal by creating things (pool, network, base image, disk size)
   before creating anything, so bad input leaves nothing behind;
2. base image: a named volume, or a URL + checksum downloaded once per pool into a
   shared volume (a `.verified` marker volume says the upload finished);
3. the machine disk: a qcow2 overlay on the base, resized to the requested size;
4. the config drive: (re)built and uploaded while no domain exists yet;
5. the domain: defined with a deterministic name and UUID (and NIC MACs) and our tag in
   <metadata>, started, and marked started with the time (so a domain stopped later is
   reported, not restarted, and address polling backs off from its start).

`domainType: auto` is settled once per host by a boot check (kvmprobe.py); the type and
why go into the domain's tag and each machine's status.backend.libvirt, not into Ready
(CAPI copies that message into every Machine and Cluster summary). spec.network is
rendered onto the config drive for the NICs' deterministic MACs.

All calls block; the reconciler runs them on worker threads.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no type hints

from capi_c3os.api.common import MachineAddress
from capi_c3os.api.infrastructure import LibvirtNetworkInterface, LibvirtSite, MachineImage, Site
from capi_c3os.backends import images
from capi_c3os.backends.base import (
    BackendError,
    MachineIdentity,
    MachineIntent,
    Phase,
    Progress,
    SiteCredentials,
)
from capi_c3os.backends.configdrive import build_config_drive, render_network_config, render_network_data
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.backends.libvirt import kvmprobe
from capi_c3os.backends.libvirt.connection import ConnectionPool

log = logging.getLogger(__name__)

GIB = 1024**3
ADDRESS_RETRY = 5.0
"""Seconds between the first looks for a DHCP lease / guest-agent address."""
ADDRESS_RETRY_MAX = 300.0
"""Looks get rarer the longer a NIC goes without an address, down to one per 5 minutes
(never none: a DHCP server that was down may still answer)."""
ADDRESS_PATIENCE = 180.0
"""Seconds after the start without any address before the Ready reason says so."""
UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)
_WATCHED_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_STARTED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN,
    libvirt.VIR_DOMAIN_EVENT_CRASHED,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
}
_CONNECTION_ERROR_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
OWN_EVENT_WAIT = 60.0
"""Seconds within which a domain's STARTED, STOPPED or UNDEFINED event is taken for the
start, destroy or undefine this backend made (and wakes no reconcile); one later than
that, by anyone, is a change to report."""
DOWNLOAD_GRACE = 2.0
"""Seconds the reconcile that starts a base image download waits for it (a small image
is then ready in one reconcile); longer ones report progress and requeue."""
DOWNLOAD_POLL = 10.0
FAILED_DOWNLOAD_KEPT = 600.0
"""Seconds a failed download's error is reported to every machine wanting that image
before one of them starts it again (when the error names no retry delay)."""


@dataclass(frozen=True)
class BaseImage:
    path: str
    format: str
    """qcow2, raw or iso."""
    capacity: int
    """Virtual size in bytes."""


class LibvirtBackend:
    """`Backend` for sites with `libvirt:`."""

    def __init__(
        self,
        connections: ConnectionPool | None = None,
        serial_log_dir: str = "/var/log/libvirt/qemu",
        image_limits: images.ImageLimits | None = None,
    ) -> None:
        self.connections = connections or ConnectionPool(on_open=self._subscribe)
        self.serial_log_dir = serial_log_dir
        self.image_limits = image_limits or images.LIMITS
        self._listeners: list[Callable[[str, str], None]] = []
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._event_worker: threading.Thread | None = None
        self._known: dict[str, dx.Tag] = {}
        """domain name -> tag, so an event for an undefined domain still finds its machine."""
        self._site_tags: dict[str, dict[str, dx.Tag]] = {}
        """site URI -> domain name -> our tag, as last listed (see `_tags_of`)."""
        self._own_changes: dict[tuple[str, int], float] = {}
        """(domain name, lifecycle event) -> when this backend made that change, until its
        event arrives: the reconcile that started (or removed) the domain reports it, so the
        event wakes no other one."""
        self._base_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._downloads: dict[tuple[str, str, str], images.Download] = {}
        """(site URI, pool, base volume) -> its download in a background thread: one per
        image and pool, however many machines want it."""
        self._locks_lock = threading.Lock()
        self._verdicts: dict[str, kvmprobe.Verdict] = {}
        """site URI -> what `domainType: auto` means there (the boot check runs once per
        host and manager process)."""
        self._verdict_locks: dict[str, threading.Lock] = {}

    # ------------------------------------------------------------------ the protocol

    def provision(self, intent: MachineIntent) -> Progress:
        site = _libvirt_site(intent.site)
        with self._errors(site, intent.credentials):
            conn = self.connections.get(site, intent.credentials)
            found = _own_domain(conn, intent.identity)
            if found is not None:
                return self._advance(conn, *found, intent)
            if intent.provisioned:
                return Progress(
                    Phase.MISSING,
                    "DomainMissing",
                    f"domain {dx.domain_name(intent.identity)} vanished from {site.uri}",
                )
            made = self._create(conn, site, intent)
            if isinstance(made, Progress):
                return made
            return self._advance(conn, made, _Look.of(made), intent)

    def deprovision(self, identity: MachineIdentity, site: Site, credentials: SiteCredentials) -> Progress:
        lsite = _libvirt_site(site)
        with self._errors(lsite, credentials):
            conn = self.connections.get(lsite, credentials)
            dom = _lookup_domain(conn, dx.domain_name(identity))
            if dom is not None:
                _check_owner(dom, identity)
                # destroy() sends SHUTDOWN and STOPPED (a stopped domain neither: their marks
                # expire unused), undefine() UNDEFINED.
                self._making(
                    dom.name(),
                    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN,
                    libvirt.VIR_DOMAIN_EVENT_STOPPED,
                    libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
                )
                _destroy(dom)
                _undefine(dom)
                self._forget_tag(lsite.uri, dom.name())
            pool = _lookup_pool(conn, lsite.pool)
            if pool is not None:
                _delete_volumes(pool, dx.resource_stem(identity))
            legacy = dx.legacy_stem(identity)
            old = _lookup_domain(conn, legacy) if legacy else None
            if old is not None and _owned(old, identity):
                # Its volumes carry no tag: removed while the domain still proves them
                # ours (stopped first), then the domain; a crash in between repeats this.
                _destroy(old)
                if pool is not None and legacy:
                    _delete_volumes(pool, legacy)
                _undefine(old)
            return Progress(
                Phase.DELETED, "Deleted", f"domain and volumes of {identity.resource_name} removed"
            )

    # ------------------------------------------------------------------ events

    def watch(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(namespace, name)` when a domain of one of our machines starts,
        stops, crashes or vanishes (libvirt lifecycle events), so a stopped machine is
        reported at once instead of at the next resync. Connections opened from now on
        subscribe; where a host cannot deliver events, the reconciler's polling remains."""
        self._listeners.append(listener)
        if self._event_worker is None:
            self._event_worker = threading.Thread(
                target=self._dispatch, name="libvirt-domain-events", daemon=True
            )
            self._event_worker.start()

    def _subscribe(self, conn: libvirt.virConnect) -> None:
        def on_lifecycle(_conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
            # Runs on libvirt's event thread: no remote calls here, only a hand-off.
            if event in _WATCHED_EVENTS:
                self._events.put((dom, event))

        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)

    def _dispatch(self) -> None:
        while True:
            dom, event = self._events.get()
            name = dom.name()
            if self._ours(name, event):
                continue
            tag = self._known.get(name)
            if tag is None:
                tag = dx.parse_tag(_safe_tag_source(dom))
                if tag is None:
                    continue  # not ours (or undefined before we ever saw it)
                self._known[name] = tag
            for listener in list(self._listeners):
                try:
                    listener(tag.namespace, tag.name)
                except Exception:
                    log.exception("domain event listener failed for %s/%s", tag.namespace, tag.name)

    def _making(self, name: str, *events: int) -> None:
        """This backend is about to cause `events` of domain `name`."""
        now = time.monotonic()
        with self._locks_lock:  # forgetting changes whose event never came (no events there)
            self._own_changes = {k: t for k, t in self._own_changes.items() if now - t < OWN_EVENT_WAIT}
            for event in events:
                self._own_changes[(name, event)] = now

    def _ours(self, name: str, event: int) -> bool:
        """Whether `event` of domain `name` is a change this backend made (told once: a
        later one is someone else's); also forgets a change that did not happen."""
        with self._locks_lock:
            when = self._own_changes.pop((name, event), None)
        return when is not None and time.monotonic() - when < OWN_EVENT_WAIT

    # ------------------------------------------------------------------ extras

    def tagged_identities(
        self, site: Site, credentials: SiteCredentials, cluster: str
    ) -> list[MachineIdentity]:
        """`registry.FindsOrphans`: identities of the cluster's machines the site still
        holds something for: domains tagged with the cluster, and machines of the
        cluster's namespace whose disk or config drive is in the pool without a domain
        (a crash between creating volumes and defining the domain; volumes carry no tag,
        so their names are decoded). The caller removes those whose C3osMachine is gone;
        it lists machines after this returns, so a machine that is creating its volumes
        right now is already listed."""
        namespace = cluster.split("/", 1)[0]
        lsite = _libvirt_site(site)
        with self._errors(lsite, credentials):
            conn = self.connections.get(lsite, credentials)
            tags = self._tags_of(lsite.uri, conn)
            found = {tag.identity() for tag in tags.values() if tag and tag.cluster == cluster}
            pool = _lookup_pool(conn, lsite.pool)
            if pool is not None and pool.isActive():
                for name in (vol.name() for vol in pool.listAllVolumes(0)):  # one call
                    identity = dx.identity_of_volume(name)
                    if (
                        identity is not None
                        and identity.namespace == namespace
                        and dx.domain_name(identity) not in tags
                    ):
                        found.add(identity)
        return sorted(found, key=lambda i: (i.namespace, i.name))

    def tagged_machines(self, site: Site, credentials: SiteCredentials, cluster: str) -> list[dx.Tag]:
        """Tags of every domain on the site that belongs to `cluster` (namespace/name)."""
        lsite = _libvirt_site(site)
        with self._errors(lsite, credentials):
            conn = self.connections.get(lsite, credentials)
            return [t for t in self._tags_of(lsite.uri, conn).values() if t and t.cluster == cluster]

    def _forget_tag(self, uri: str, name: str) -> None:
        with self._locks_lock:
            self._site_tags.get(uri, {}).pop(name, None)

    def _tags_of(self, uri: str, conn: libvirt.virConnect) -> dict[str, dx.Tag | None]:
        """Every domain of the host by name, with our tag (None: not one of ours). A tag
        is read once per domain: it never changes (the name is derived from the machine),
        so a sweep of a host with N domains costs one listing, not N+1 calls."""
        domains = conn.listAllDomains(0)
        with self._locks_lock:
            known = self._site_tags.get(uri, {})
        tags = {}
        for dom in domains:
            name = dom.name()
            tags[name] = known[name] if name in known else _domain_tag(dom)
        with self._locks_lock:  # only domains that still exist: no growth with churn
            self._site_tags[uri] = {name: tag for name, tag in tags.items() if tag is not None}
        return tags

    # ------------------------------------------------------------------ steps

    def _create(
        self, conn: libvirt.virConnect, site: LibvirtSite, intent: MachineIntent
    ) -> Progress | libvirt.virDomain:
        """Define the domain (and return it); a Progress instead while its base image is
        downloading."""
        identity = intent.identity
        machine = intent.libvirt
        pool = _lookup_pool(conn, site.pool)
        if pool is None:
            raise BackendError(
                "StoragePoolNotFound",
                f"storage pool {site.pool!r} does not exist on {site.uri}",
                retry_after=60.0,
            )
        _ensure_active(pool)
        interfaces = _interfaces(site, intent)
        for nic in interfaces:
            if nic.network and _lookup_network(conn, nic.network) is None:
                raise BackendError(
                    "NetworkNotFound",
                    f"network {nic.network!r} does not exist on {site.uri}",
                    retry_after=60.0,
                )
        if intent.network is not None and len(intent.network.interfaces) > len(interfaces):
            raise BackendError(
                "NetworkConfigMismatch",
                f"spec.network configures {len(intent.network.interfaces)} interface(s) but the machine "
                f"has {len(interfaces)} NIC(s) (backend.libvirt.networkInterfaces, or the site's "
                "network/bridge)",
                retry_after=None,
            )
        base = self._base_image(conn, site, pool, intent)
        if isinstance(base, Progress):
            return base
        wanted = intent.disk_gib * GIB
        if intent.image.format != "iso" and wanted < base.capacity:
            raise BackendError(
                "DiskTooSmall",
                f"diskGiB {intent.disk_gib} is smaller than the image ({_gib(base.capacity)} GiB); "
                "a disk is never shrunk below its image",
                retry_after=None,
            )
        test_driver = conn.getType().lower() == "test"

        disk = _lookup_volume(pool, dx.disk_volume_name(identity))
        if disk is None:
            if intent.image.format == "iso":
                xml = dx.volume_xml(dx.disk_volume_name(identity), wanted, "qcow2")
            else:
                xml = dx.volume_xml(dx.disk_volume_name(identity), wanted, "qcow2", base.path, base.format)
            disk = pool.createXML(xml, 0)
        if not test_driver and disk.info()[1] < wanted:
            disk.resize(wanted, 0)

        # No domain yet, so nothing reads the drive: rebuild it, since an earlier run may
        # have died half-way through the upload.
        drive_name = dx.config_drive_volume_name(identity)
        old = _lookup_volume(pool, drive_name)
        if old is not None:
            old.delete(0)
        fmt = machine.config_drive_format if machine else "nocloud"
        macs = tuple(dx.mac_address(identity, i) for i in range(len(interfaces)))
        network_config = intent.network_config
        if intent.network is not None:
            render = render_network_config if fmt == "nocloud" else render_network_data
            network_config = render(intent.network, macs)
        iso = build_config_drive(intent.user_data, intent.meta_data, network_config, fmt)
        drive = pool.createXML(dx.volume_xml(drive_name, len(iso), "raw"), 0)
        if not test_driver:
            _upload(conn, drive, iso)

        dkb = machine.direct_kernel_boot if machine else None
        domain_type, why = ("test", "") if test_driver else self._domain_type(conn, site, pool)
        spec = dx.DomainSpec(
            identity=identity,
            tag=dx.Tag(identity.namespace, identity.name, identity.provider_id, intent.cluster, why),
            domain_type=domain_type,
            cpus=intent.cpus,
            memory_mib=intent.memory_mib,
            disk_path=disk.path(),
            disk_format="qcow2",
            config_drive_path=drive.path(),
            cdrom_path=base.path if intent.image.format == "iso" else None,
            uefi=bool(machine and machine.firmware == "uefi"),
            kernel=dkb.kernel if dkb else None,
            initrd=dkb.initrd if dkb else None,
            cmdline=dkb.cmdline if dkb else None,
            interfaces=tuple(interfaces),
            macs=macs,
            serial_log=os.path.join(self.serial_log_dir, f"{dx.domain_name(identity)}-serial.log"),
        )
        self._forget_tag(site.uri, dx.domain_name(identity))  # what a domain of this name was before
        return conn.defineXML(dx.domain_xml(spec))

    def _advance(
        self, conn: libvirt.virConnect, dom: libvirt.virDomain, look: _Look, intent: MachineIntent
    ) -> Progress:
        identity = intent.identity
        self._known[dom.name()] = dx.Tag(
            identity.namespace, identity.name, identity.provider_id, intent.cluster
        )
        state, reason = dom.state(0)
        details = {"domainName": dom.name(), "domainUUID": dom.UUIDString()}
        details.update(self._domain_type_details(look, _libvirt_site(intent.site)))
        if state == libvirt.VIR_DOMAIN_SHUTOFF and not look.started:
            self._making(dom.name(), libvirt.VIR_DOMAIN_EVENT_STARTED)
            try:
                dom.create()
            except BaseException:
                self._ours(dom.name(), libvirt.VIR_DOMAIN_EVENT_STARTED)
                raise
            look.started_at = _mark_started(dom, look.tag, live=True)
            state, reason = dom.state(0)
        elif not look.started and state != libvirt.VIR_DOMAIN_SHUTOFF:
            # a crash between create() and the mark
            look.started_at = _mark_started(dom, look.tag, live=state != libvirt.VIR_DOMAIN_CRASHED)
        if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            per_nic = _addresses(dom, _static_addresses(intent, look.macs), look.macs)
            addresses = [MachineAddress(type="Hostname", address=intent.hostname)]
            for found in (a for nic in per_nic.values() for a in nic):
                if found not in addresses:
                    addresses.append(found)
            if all(per_nic.values()):  # every NIC has an address (or there is no NIC)
                return Progress(
                    Phase.RUNNING,
                    "DomainRunning",
                    f"domain {dom.name()} is running",
                    addresses=tuple(addresses),
                    details=details,
                )
            return self._without_address(dom, look, addresses, details, none=not any(per_nic.values()))
        return Progress(
            Phase.STOPPED,
            "DomainStopped",
            f"domain {dom.name()} is {_state_name(state, reason)}",
            details=details,
        )

    @staticmethod
    def _without_address(
        dom: libvirt.virDomain,
        look: _Look,
        addresses: list[MachineAddress],
        details: dict[str, str],
        none: bool,
    ) -> Progress:
        """Running, but a NIC has no address yet (`none`: no NIC has one). Still
        provisioned: the guest boots and joins the cluster by its providerID whatever its
        address (addresses are for people and tools); we keep looking, ever less often,
        and say so after a while when no NIC has an address. A NIC without one next to
        NICs with one (maybe on purpose) leaves Ready's message alone: CAPI copies it."""
        started_at = look.started_at
        if started_at is None:  # started by an older version: the clock starts now
            started_at = _mark_started(dom, look.tag, live=True)  # it runs
        waited = max(0.0, time.time() - started_at)
        delay = address_retry(waited)
        if not none:
            reason, message = "DomainRunning", f"domain {dom.name()} is running"
        elif waited < ADDRESS_PATIENCE:
            reason, message = "DomainRunning", f"domain {dom.name()} is running, waiting for its address"
        else:
            reason = "NoAddress"
            message = (
                f"domain {dom.name()} is running but no NIC has an address after {waited / 60:.0f} min "
                "(no DHCP lease on its libvirt network, no answer from a guest agent; bridged NICs "
                "need qemu-guest-agent in the image or static addresses in spec.network); "
                f"still provisioned, looking again in {delay:.0f} s"
            )
        return Progress(
            Phase.RUNNING,
            reason,
            message,
            addresses=tuple(addresses),
            requeue_after=delay,
            details=details,
        )

    def _base_image(
        self, conn: libvirt.virConnect, site: LibvirtSite, pool: libvirt.virStoragePool, intent: MachineIntent
    ) -> BaseImage | Progress:
        """The base volume; for a URL, a Progress while it downloads in the background
        (never on this reconcile's thread: a large image would hold a worker for hours)."""
        image = intent.image
        if image.volume is not None:
            vol = _lookup_volume(pool, image.volume)
            if vol is None:
                raise BackendError(
                    "ImageNotFound",
                    f"base image volume {image.volume!r} is not in pool {site.pool!r} on {site.uri}",
                    retry_after=60.0,
                )
            return BaseImage(vol.path(), image.format, int(vol.info()[1]))
        assert image.url is not None and image.checksum is not None
        name = dx.base_volume_name(image.checksum, image.format)
        key = (site.uri, site.pool, name)
        started = False
        for attempt in range(2):  # again once when the download ends within the grace
            with self._base_lock(*key):
                job = self._downloads.get(key)
                if job is None or job.done.is_set():
                    vol = _lookup_volume(pool, name)
                    if vol is not None and _lookup_volume(pool, name + ".verified") is not None:
                        self._downloads.pop(key, None)
                        return BaseImage(vol.path(), image.format, _virtual_size(vol, image.format))
                    if job is not None and job.error is not None and _still_reported(job, image.url):
                        raise job.error
                    job = self._start_download(key, site, intent)
                    started = True
                job.waiting.add((intent.identity.namespace, intent.identity.name))
            # Only the reconcile that started it waits a little: every machine waiting for
            # a long download doing so on each requeue would keep the workers busy.
            if attempt or not started or not job.done.wait(DOWNLOAD_GRACE):
                break
        assert job is not None
        return Progress(
            Phase.PROVISIONING,
            "DownloadingImage",
            job.message(f"pool {site.pool!r} on {site.uri}"),
            requeue_after=DOWNLOAD_POLL,
        )

    def _start_download(
        self, key: tuple[str, str, str], site: LibvirtSite, intent: MachineIntent
    ) -> images.Download:
        assert intent.image.url is not None
        job = self._downloads[key] = images.Download(url=intent.image.url)
        threading.Thread(
            target=self._download,
            args=(job, site, intent.credentials, intent.image, key[2]),
            name=f"image-download-{key[2]}",
            daemon=True,
        ).start()
        return job

    def _download(
        self,
        job: images.Download,
        site: LibvirtSite,
        credentials: SiteCredentials,
        image: MachineImage,
        name: str,
    ) -> None:
        """Fetch, verify, upload and mark the base volume (the marker last: a manager
        killed before it leaves a volume without one, which the next download replaces)."""
        try:
            with self._errors(site, credentials):
                conn = self.connections.get(site, credentials)
                pool = _lookup_pool(conn, site.pool)
                if pool is None:
                    raise BackendError(
                        "StoragePoolNotFound", f"storage pool {site.pool!r} does not exist", retry_after=60.0
                    )
                for stale in (name, name + ".verified"):  # what a killed manager left
                    vol = _lookup_volume(pool, stale)
                    if vol is not None:
                        vol.delete(0)
                with images.scratch_dir() as tmp:
                    local = os.path.join(tmp, "image")
                    size, _virtual = images.fetch(image, local, self.image_limits, job.progress)
                    job.uploading = True
                    vol = pool.createXML(dx.volume_xml(name, size, "raw"), 0)
                    if conn.getType().lower() != "test":
                        with open(local, "rb") as handle:
                            _upload_file(conn, vol, handle, size)
                pool.createXML(dx.volume_xml(name + ".verified", 0, "raw"), 0)
        except BackendError as exc:
            job.error = exc
        except Exception:
            log.exception("downloading image %s failed", images.shown(job.url))
            job.error = BackendError(
                "ImageDownloadFailed", f"downloading {images.shown(job.url)} failed (see the manager's log)"
            )
        finally:
            job.finished_at = time.monotonic()
            job.done.set()
            if job.error is not None:
                log.info("image %s: %s", images.shown(job.url), job.error.message)
            for namespace, machine in sorted(job.waiting):
                for listener in list(self._listeners):
                    try:
                        listener(namespace, machine)
                    except Exception:
                        log.exception("image download listener failed for %s/%s", namespace, machine)

    def _domain_type(
        self, conn: libvirt.virConnect, site: LibvirtSite, pool: libvirt.virStoragePool
    ) -> tuple[str, str]:
        """The type for a new domain, and why."""
        if site.domain_type != "auto":
            return site.domain_type, f"the site sets domainType: {site.domain_type}"
        with self._locks_lock:
            lock = self._verdict_locks.setdefault(site.uri, threading.Lock())
        with lock:  # one check per host, however many machines wait for it
            verdict = self._verdicts.get(site.uri)
            if verdict is None:
                verdict = kvmprobe.check(conn, pool, _upload, dx.volume_xml)
                self._verdicts[site.uri] = verdict
                # Said once per host here; each machine's status.backend.libvirt carries
                # it too, but no Ready message does (CAPI copies those into every summary).
                level = logging.INFO if verdict.domain_type == "kvm" else logging.WARNING
                log.log(
                    level, "domainType auto on %s means %s: %s", site.uri, verdict.domain_type, verdict.reason
                )
            return verdict.domain_type, f"domainType auto: {verdict.reason}"

    def _domain_type_details(self, look: _Look, site: LibvirtSite) -> dict[str, str]:
        """For status.backend.libvirt: the domain's type and why it has it."""
        kind = look.domain_type
        why = look.tag.domain_type_reason if look.tag else ""
        verdict = self._verdicts.get(site.uri)
        if not why and site.domain_type == "auto" and verdict and verdict.domain_type == kind:
            why = f"domainType auto: {verdict.reason}"  # defined by a version that kept no reason
        details = {"domainType": kind} if kind else {}
        if why:
            details["domainTypeReason"] = why[:1024]  # the status field's limit
        return details

    def _base_lock(self, uri: str, pool: str, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._base_locks.setdefault((uri, pool, name), threading.Lock())

    @contextmanager
    def _errors(self, site: LibvirtSite, credentials: SiteCredentials) -> Iterator[None]:
        """libvirt's exceptions in our terms; a dead connection is dropped for the next call."""
        try:
            yield
        except libvirt.libvirtError as exc:
            if exc.get_error_domain() in _CONNECTION_ERROR_DOMAINS:
                self.connections.drop(site, credentials)
                raise BackendError("HostUnreachable", f"lost libvirt at {site.uri}: {exc}", 15.0) from None
            raise BackendError("LibvirtError", f"libvirt at {site.uri}: {exc}", 30.0) from None


# ---------------------------------------------------------------------- helpers


def _libvirt_site(site: Site) -> LibvirtSite:
    if site.libvirt is None:
        raise BackendError("WrongBackend", f"site {site.name!r} is not a libvirt site", retry_after=None)
    return site.libvirt


def _interfaces(site: LibvirtSite, intent: MachineIntent) -> list[LibvirtNetworkInterface]:
    machine = intent.libvirt
    if machine is not None and machine.network_interfaces is not None:
        return list(machine.network_interfaces)
    if site.network:
        return [LibvirtNetworkInterface(network=site.network)]
    if site.bridge:
        return [LibvirtNetworkInterface(bridge=site.bridge)]
    return []


def _lookup_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _lookup_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise


def _lookup_network(conn: libvirt.virConnect, name: str) -> libvirt.virNetwork | None:
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise


def _lookup_volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def _ensure_active(pool: libvirt.virStoragePool) -> None:
    if not pool.isActive():
        raise BackendError(
            "StoragePoolInactive", f"storage pool {pool.name()!r} is not active", retry_after=60.0
        )


def _domain_tag(dom: libvirt.virDomain) -> dx.Tag | None:
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dx.METADATA_NS, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    return dx.parse_tag(xml)


@dataclass
class _Look:
    """What a reconcile needs to know of a domain, from one read of its (inactive) XML:
    a look at a running machine costs the same few calls however many there are."""

    tag: dx.Tag | None
    started: bool
    """We started it once (so a domain stopped later is reported, not restarted)."""
    started_at: float | None
    """Unix time of that first start (address polling backs off from it)."""
    domain_type: str
    macs: list[str]
    """Its NICs' MACs, in its order (the order of spec.network's interfaces)."""

    @classmethod
    def of(cls, dom: libvirt.virDomain) -> _Look:
        xml = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        mark = xml.find(f"metadata/{{{dx.METADATA_NS}}}machine")
        started = mark.find(f"{{{dx.METADATA_NS}}}{_STARTED}") if mark is not None else None
        started_at = mark.find(f"{{{dx.METADATA_NS}}}{_STARTED_AT}") if mark is not None else None
        try:
            at = float(started_at.text or "") if started_at is not None else None
        except ValueError:
            at = None
        return cls(
            tag=dx.parse_tag(ET.tostring(mark, encoding="unicode")) if mark is not None else None,
            started=started is not None and started.text == "true",
            started_at=at,
            domain_type=xml.get("type") or "",
            macs=_macs_of(xml),
        )


def _own_domain(
    conn: libvirt.virConnect, identity: MachineIdentity
) -> tuple[libvirt.virDomain, _Look] | None:
    """The machine's domain and a look at it: by its name (DomainNameTaken when another's
    holds it), else one a release before the 96-bit names defined under the old name (only
    when its tag names this machine: another's domain of that name is none of our business)."""
    dom = _lookup_domain(conn, dx.domain_name(identity))
    if dom is not None:
        look = _Look.of(dom)
        _check_tag(dom, look.tag, identity)
        return dom, look
    legacy = dx.legacy_stem(identity)
    old = _lookup_domain(conn, legacy) if legacy else None
    if old is None:
        return None
    look = _Look.of(old)
    return (old, look) if look.tag is not None and look.tag.provider_id == identity.provider_id else None


def _owned(dom: libvirt.virDomain, identity: MachineIdentity) -> bool:
    tag = _domain_tag(dom)
    return tag is not None and tag.provider_id == identity.provider_id


def _delete_volumes(pool: libvirt.virStoragePool, stem: str) -> None:
    for name in (stem + dx.DISK_SUFFIX, stem + dx.CONFIG_DRIVE_SUFFIX):
        vol = _lookup_volume(pool, name)
        if vol is not None:
            vol.delete(0)


def _check_owner(dom: libvirt.virDomain, identity: MachineIdentity) -> None:
    _check_tag(dom, _domain_tag(dom), identity)


def _check_tag(dom: libvirt.virDomain, tag: dx.Tag | None, identity: MachineIdentity) -> None:
    if tag is None or tag.provider_id != identity.provider_id:
        owner = tag.provider_id if tag else "nobody of ours"
        raise BackendError(
            "DomainNameTaken",
            f"a domain named {dom.name()} exists but belongs to {owner}; leaving it alone",
            retry_after=None,
        )


_STARTED = "started"
_STARTED_AT = "startedAt"
"""Unix time of our first start of the domain (address backoff survives restarts)."""


def address_retry(waited: float) -> float:
    """Seconds until the next look for an address, after `waited` seconds without one:
    every 5 s at first, then half the time waited so far (so the looks are geometric),
    at most every 5 minutes."""
    return min(max(ADDRESS_RETRY, waited / 2), ADDRESS_RETRY_MAX)


def _safe_tag_source(dom: libvirt.virDomain) -> str:
    """The domain's <metadata> tag text, or "" (an undefined domain has none left)."""
    try:
        return str(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dx.METADATA_NS, 0))
    except libvirt.libvirtError:
        return ""


def _mark_started(dom: libvirt.virDomain, tag: dx.Tag | None, live: bool) -> float:
    """Mark the domain started now (in its tag, `tag`; `live`: in the running domain's
    too, which the caller knows from its state); the time of the mark."""
    now = float(int(time.time()))
    if tag is None:  # pragma: no cover - checked by the caller
        return now
    root = ET.fromstring(dx.tag_xml(tag))
    ET.SubElement(root, _STARTED).text = "true"
    ET.SubElement(root, _STARTED_AT).text = str(int(now))
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if live:
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        ET.tostring(root, encoding="unicode"),
        dx.METADATA_PREFIX,
        dx.METADATA_NS,
        flags,
    )
    return now


def _destroy(dom: libvirt.virDomain) -> None:
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # stopped meanwhile
            raise


def _undefine(dom: libvirt.virDomain) -> None:
    try:
        dom.undefineFlags(UNDEFINE_FLAGS)
    except libvirt.libvirtError as exc:
        # Drivers without NVRAM support (the test driver) reject the flag; nothing of
        # that kind can exist there.
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        dom.undefine()


def _macs(dom: libvirt.virDomain) -> list[str]:
    """The MACs of the domain's NICs, in its order (the order of spec.network's interfaces)."""
    return _macs_of(ET.fromstring(dom.XMLDesc(0)))


def _macs_of(xml: ET.Element) -> list[str]:
    found = []
    for nic in xml.iter("interface"):
        mac = nic.find("mac")
        if mac is not None and mac.get("address"):
            found.append(str(mac.get("address")).lower())
    return found


def _addresses(
    dom: libvirt.virDomain,
    static: Mapping[str, list[MachineAddress]] | None = None,
    macs: list[str] | None = None,
) -> dict[str, list[MachineAddress]]:
    """Every NIC's addresses by MAC, in the domain's order (see `merge_addresses`; `macs`
    when known); the guest agent is asked only when a NIC is left without one by its
    static addresses and the network's DHCP leases (one call each: a guest without an
    agent answers fast). A domain without NICs has no address to ask for."""
    macs = _macs(dom) if macs is None else macs
    static = static or {}
    leases = _source(dom, libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE) if macs else {}
    agent: dict[str, Any] = {}
    if any(not static.get(mac) and not _usable(leases, mac) for mac in macs):
        agent = _source(dom, libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
    return merge_addresses(macs, static, leases, agent)


def _source(dom: libvirt.virDomain, source: int) -> dict[str, Any]:
    try:
        return dict(dom.interfaceAddresses(source, 0) or {})
    except libvirt.libvirtError:  # no lease source (bridge), no agent (yet)
        return {}


def _usable(interfaces: Mapping[str, Any], mac: str) -> list[MachineAddress]:
    """The addresses `interfaces` (as libvirt's interfaceAddresses returns them) give the
    NIC with `mac`, without loopback and link-local ones."""
    found: list[MachineAddress] = []
    for info in interfaces.values():
        if str(info.get("hwaddr") or "").lower() != mac:
            continue
        for addr in info.get("addrs") or []:
            value = str(addr.get("addr") or "")
            if not value or value.startswith(("127.", "::1", "fe80:")):
                continue
            address = MachineAddress(type="InternalIP", address=value)
            if address not in found:
                found.append(address)
    return found


def merge_addresses(
    macs: list[str],
    static: Mapping[str, list[MachineAddress]],
    leases: Mapping[str, Any],
    agent: Mapping[str, Any],
) -> dict[str, list[MachineAddress]]:
    """Each NIC's addresses (by MAC, in `macs` order): its static ones from spec.network
    and its DHCP lease; the guest agent's only for a NIC that has neither (a lease is the
    network's own word; the agent is the guest's, e.g. for a bridged NIC). Interfaces the
    agent reports with other MACs (the guest's own bridges, k3s's cni0 and flannel.1)
    are no address of the machine. An empty list: that NIC has no address yet."""
    found: dict[str, list[MachineAddress]] = {}
    for mac in macs:
        nic = list(static.get(mac, []))
        nic += [a for a in _usable(leases, mac) if a not in nic]
        if not nic:
            nic = _usable(agent, mac)
        found[mac] = nic
    return found


def _static_addresses(intent: MachineIntent, macs: list[str]) -> dict[str, list[MachineAddress]]:
    """The addresses spec.network gives the guest (known without asking anyone), by the
    MAC of the NIC they are for (spec.network's interfaces are in NIC order)."""
    found = {}
    for mac, iface in zip(macs, intent.network.interfaces if intent.network else [], strict=False):
        found[mac] = [
            MachineAddress(type="InternalIP", address=str(ipaddress.ip_interface(text).ip))
            for text in iface.addresses or []
        ]
    return found


def _state_name(state: int, reason: int) -> str:
    names = {
        libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
        libvirt.VIR_DOMAIN_CRASHED: "crashed",
        libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
    }
    shutoff_reasons = {
        libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "the guest shut down",
        libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
        libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "the guest crashed",
        libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "it failed to start",
    }
    text = names.get(state, f"in state {state}")
    if state == libvirt.VIR_DOMAIN_SHUTOFF and reason in shutoff_reasons:
        text += f" ({shutoff_reasons[reason]})"
    return text


def _upload(conn: libvirt.virConnect, vol: libvirt.virStorageVol, data: bytes) -> None:
    stream = conn.newStream(0)
    vol.upload(stream, 0, len(data), 0)
    view = memoryview(data)

    def source(_stream: libvirt.virStream, nbytes: int, state: dict[str, int]) -> bytes:
        start = state["offset"]
        state["offset"] = start + nbytes
        return bytes(view[start : start + nbytes])

    stream.sendAll(source, {"offset": 0})
    stream.finish()


def _upload_file(conn: libvirt.virConnect, vol: libvirt.virStorageVol, handle: object, size: int) -> None:
    stream = conn.newStream(0)
    vol.upload(stream, 0, size, 0)

    def source(_stream: libvirt.virStream, nbytes: int, fh: object) -> bytes:
        return fh.read(nbytes)  # type: ignore[attr-defined, no-any-return]

    stream.sendAll(source, handle)
    stream.finish()


def _still_reported(job: images.Download, url: str) -> bool:
    """A failed download's error stands for a while (so machines wanting the same image
    do not fetch it again one after another), unless the URL changed."""
    kept = job.error.retry_after if job.error and job.error.retry_after is not None else FAILED_DOWNLOAD_KEPT
    return job.url == url and time.monotonic() - (job.finished_at or 0.0) < kept


def _virtual_size(vol: libvirt.virStorageVol, fmt: str) -> int:
    """A shared base uploaded as raw bytes: read the qcow2 header for its virtual size."""
    if fmt != "qcow2":
        return int(vol.info()[1])
    try:
        conn = vol.connect()
        stream = conn.newStream(0)
        vol.download(stream, 0, 32, 0)
        header = b""
        while len(header) < 32:
            chunk = stream.recv(32 - len(header))
            if not chunk or isinstance(chunk, int):
                break
            header += chunk
        stream.finish()
    except libvirt.libvirtError:
        return int(vol.info()[1])
    if header[:4] != b"QFI\xfb":
        return int(vol.info()[1])
    return int(struct.unpack(">Q", header[24:32])[0])


def _gib(size: int) -> str:
    return f"{size / GIB:.1f}".rstrip("0").rstrip(".")
