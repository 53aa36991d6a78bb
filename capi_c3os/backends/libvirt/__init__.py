"""libvirt backend: machines as VMs on a libvirt host (local or remote)."""

from capi_c3os.backends.libvirt.backend import LibvirtBackend

__all__ = ["LibvirtBackend"]
