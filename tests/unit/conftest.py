"""Fixtures of the libvirt unit tests, on libvirt's in-process `test:///default` driver."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import libvirt  # type: ignore[import-untyped]
import pytest

from capi_c3os.backends.libvirt import LibvirtBackend
from capi_c3os.backends.libvirt import domain as dx

URI = "test:///default"
POOL = "default-pool"
GIB = 1024**3


@pytest.fixture
def conn() -> Iterator[Any]:
    """A connection to the test driver (its state is per process, shared by connections)."""
    c = libvirt.open(URI)
    yield c
    c.close()


@pytest.fixture
def backend() -> Iterator[LibvirtBackend]:
    b = LibvirtBackend()
    yield b
    b.connections.close()


@pytest.fixture
def base(conn: Any) -> Iterator[str]:
    """A 1 GiB base image volume, unique to the test."""
    name = f"base-{uuid.uuid4().hex[:8]}.qcow2"
    vol = conn.storagePoolLookupByName(POOL).createXML(dx.volume_xml(name, GIB, "qcow2"), 0)
    yield name
    vol.delete(0)
