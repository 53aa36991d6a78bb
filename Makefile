# One entry point for set-up and tests; CI runs `make test` on a fresh clone (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# uv reads and refreshes uv.lock (one universal lock, with hashes, for every Python and
# platform; the dev extra and the runtime set the image installs come from the same file).
UV_VERSION := $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' hack/uv-requirements.txt)
UV := $(VENV)/.uv-$(UV_VERSION)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml uv.lock | sha256sum | cut -c1-16)
PYTEST_ARGS ?=
# Parallel pytest workers (pytest-xdist), each with its own servers; a test module stays
# on one worker (its module-scoped clusters and ordered scenarios stay together).
JOBS ?= 3
XDIST = -n $(JOBS) --dist loadfile
# Integration modules that take seconds, not minutes (CRD schemas, RBAC, reconcilers
# against the real API server, CAPI core): with tests/unit, `make test-fast`.
FAST_INTEGRATION = tests/integration/bootstrap tests/integration/test_crds.py \
	tests/integration/test_kube_vip_pod.py tests/integration/controlplane/test_controlplane_api.py \
	tests/integration/test_manager.py tests/integration/test_templates.py \
	tests/integration/test_capi_core.py tests/integration/test_management_plane.py \
	tests/integration/test_clusterctl_repository.py tests/integration/libvirt/test_libvirt_addresses.py \
	tests/integration/ironic/test_ironic_ownership.py tests/integration/ironic/test_ironic_sites.py

.PHONY: test test-fast unit integration lint manifests binaries prepare system-deps venv lock lock-upgrade image release demo demo-down clean

test: system-deps venv prepare lint ## everything a fresh machine needs, then every test
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: venv prepare ## the inner loop: unit tests and the quick integration tests
	$(PY) -m pytest $(XDIST) tests/unit $(FAST_INTEGRATION) $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: venv prepare
	$(PY) -m pytest $(XDIST) tests/integration $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check capi_c3os tests e2e bench
	$(VENV)/bin/ruff format --check capi_c3os tests e2e bench
	$(VENV)/bin/mypy
	$(PY) -m capi_c3os manifests --check

manifests: venv ## regenerate config/ from the models
	$(PY) -m capi_c3os manifests

system-deps:
	hack/system-deps.sh

$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --only-binary :all: -r hack/uv-requirements.txt
	rm -f $(VENV)/.uv-* && touch $@

# Exactly the locked versions, each checked against its hash; `--locked` refuses a lock
# that no longer matches pyproject.toml (run `make lock`).
venv: $(STAMP)
$(STAMP): pyproject.toml uv.lock $(UV)
	$(VENV)/bin/uv export --quiet --locked --extra dev --no-emit-project --output-file $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

lock: $(UV) ## update uv.lock after a change to pyproject.toml (keeps every other pin)
	$(VENV)/bin/uv lock

lock-upgrade: $(UV) ## refresh uv.lock to the newest versions pyproject.toml allows
	$(VENV)/bin/uv lock --upgrade

prepare: venv ## the Go binaries, the stand-in image, the manager image and the pinned server virtualenvs, concurrently (cached)
	$(PY) -m capi_c3os.dev.prepare

image: ## the manager image from Debian packages only (mmdebstrap base + podman build; cached), prints its reference
	hack/manager-image.sh

release: venv ## VERSION=vX.Y.Z: dist/VERSION/ holds what a release publishes (components, metadata, templates, image archive, SHA256SUMS)
	@test -n "$(VERSION)" || { echo "usage: make release VERSION=vX.Y.Z" >&2; exit 2; }
	$(PY) -m capi_c3os.dev.release $(VERSION)

binaries: ## build (once, cached in ~/.cache/capi-c3os) etcd, kube-apiserver, CAPI core, clusterctl, kairos-agent, yip, kairos-check, c3os-agent
	$(PYTHON) -m capi_c3os.dev.binaries

demo: system-deps venv binaries ## management plane, our manager, a private libvirtd and a 1+1 edge cluster, left running
	$(PY) -m capi_c3os dev up --dir .demo

demo-down: ## remove the demo cluster and stop everything `make demo` started (safe to re-run)
	test ! -d .demo || $(PY) -m capi_c3os dev down --dir .demo

clean: demo-down
	rm -rf .demo $(VENV)
