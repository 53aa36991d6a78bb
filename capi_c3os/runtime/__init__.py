"""Cluster API Runtime SDK extension: in-place A/B upgrades of c3os machines."""
