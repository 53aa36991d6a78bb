"""The enrolled-hosts backend: bare metal without a BMC that registered itself."""

from capi_c3os.backends.enrolled.backend import EnrolledBackend, Inventory

__all__ = ["EnrolledBackend", "Inventory"]
