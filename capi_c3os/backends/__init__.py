"""Where machines become real: the Backend protocol and its libvirt and Ironic implementations."""
