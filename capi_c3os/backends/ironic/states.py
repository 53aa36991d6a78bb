"""Ironic's provision states (ironic/common/states.py) that the backend tells apart."""

from __future__ import annotations

AVAILABLE = "available"
ACTIVE = "active"
MANAGEABLE = "manageable"
DEPLOYING = "deploying"
DEPLOY_WAIT = "wait call-back"
DEPLOY_HOLD = "deploy hold"
DEPLOY_FAILED = "deploy failed"
DELETING = "deleting"
CLEANING = "cleaning"
CLEAN_WAIT = "clean wait"
CLEAN_HOLD = "clean hold"
CLEAN_FAILED = "clean failed"
INSPECTING = "inspecting"
INSPECT_WAIT = "inspect wait"
ERROR = "error"

# Provision-state targets (the verbs of PUT /v1/nodes/{node}/states/provision).
TARGET_ACTIVE = "active"
TARGET_DELETED = "deleted"
TARGET_MANAGE = "manage"
TARGET_PROVIDE = "provide"

DEPLOY_IN_PROGRESS = frozenset({DEPLOYING, DEPLOY_WAIT, DEPLOY_HOLD})
CLEAN_IN_PROGRESS = frozenset({DELETING, CLEANING, CLEAN_WAIT, CLEAN_HOLD})
# What the site's maxConcurrentProvisioning counts: nodes doing long work on the
# conductor (and, with real hardware, on the provisioning network).
BUSY = DEPLOY_IN_PROGRESS | CLEAN_IN_PROGRESS | frozenset({INSPECTING, INSPECT_WAIT})
# Failures that waiting will not heal while the node is deployed or being deployed.
PROVISION_FAILURES = frozenset({ERROR, CLEAN_FAILED, "inspect failed", "rescue failed", "unrescue failed"})
