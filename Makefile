# kvm-hypercall-harness: every tool it needs comes from here (Debian packages + PyPI).
#   make setup   install system packages and the Python package (idempotent, quick when done)
#   make run     the main job on the embedded default (Debian linux-source-6.1)
#   make test    unit tests, then the end-to-end tests (real QEMU, kernels, SSH)
#   make bench   print the performance figures

PYTHON ?= python3
APT_PACKAGES := qemu-system-arm qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
	linux-source-6.1 xz-utils make flex bison bc libssl-dev libelf-dev cpio kmod ccache patch git \
	mmdebstrap e2fsprogs debian-archive-keyring dropbear-bin openssh-client ca-certificates gcc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-system setup-python run test unit e2e bench clean lab-test lab-grade

setup: setup-system setup-python

setup-system:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	else echo "system packages: all present"; fi

setup-python:
	@cd / && $(PYTHON) -c 'import sys, harness, qemu.qmp, paramiko, pexpect, yaml, pytest; \
	  sys.exit(harness.__file__ != "$(CURDIR)/harness/__init__.py")' 2>/dev/null \
	  && echo "python package: installed" || $(PYTHON) -m pip install -q -e "$(CURDIR)"

run: setup
	$(PYTHON) -m harness run

unit:
	$(PYTHON) -m pytest -q

e2e:
	$(PYTHON) -m pytest -q -rs -m e2e

test: setup unit e2e

bench: setup
	$(PYTHON) -m harness.bench

clean:
	$(PYTHON) -m harness clean

# The KVM-API lab (seed 003): x86 /dev/kvm, see docs/kvm-api-lab.md
lab-test:
	$(PYTHON) -m pytest -q tests/kvmlab

lab-grade:
	$(PYTHON) -m harness.kvmlab grade $(SUBS) --out $(or $(OUT),lab-results) -j 2
