"""The Ironic backend: bare-metal machines deployed by a standalone OpenStack Ironic."""

from capi_c3os.backends.ironic.backend import IronicBackend, configure

__all__ = ["IronicBackend", "configure"]
