# kvm-hypercall-harness: every tool it needs comes from here (Debian packages + PyPI).
#   make setup   install system packages and the harness in a virtual environment (.venv)
#   make run     the main job on the embedded default (Debian's linux-source: 6.1 on 12, 6.12 on 13)
#   make experiments  the migration experiments: six scenarios, L1 ground truth, report.html
#   make test    unit tests, then the end-to-end tests (real QEMU, kernels, SSH)
#   make bench   measure: print the figures, update docs/performance.md (COLD=1 adds a cold run, ONLY=warm,rates picks parts)
#
# The Python side lives in .venv, made from the distribution's python3 (Debian's python
# refuses system-wide pip installs, PEP 668).  Every target below uses .venv/bin/python;
# `. .venv/bin/activate` puts `kvm-harness` on your PATH.

SYSTEM_PYTHON ?= /usr/bin/python3
VENV ?= $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
# the package list depends on the host architecture (no cross compiler on arm64)
APT_PACKAGES = $(shell $(SYSTEM_PYTHON) $(CURDIR)/harness/core/hostarch.py apt-packages)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-system setup-python run experiments test unit e2e faults bench bench-grading soak clean lab-test lab-grade grade grade-test-full

setup: setup-system setup-python

setup-system:
	@[ -x $(SYSTEM_PYTHON) ] || { echo "setup: $(SYSTEM_PYTHON) not found: apt-get install python3 (or make SYSTEM_PYTHON=...)"; exit 2; }
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	else echo "system packages: all present"; fi

# (re)made when missing or when pyproject.toml changes
$(VENV)/.installed: pyproject.toml
	@[ -x $(PYTHON) ] || { echo "creating $(VENV) from $(SYSTEM_PYTHON)"; $(SYSTEM_PYTHON) -m venv $(VENV); }
	$(PYTHON) -m pip install -q --disable-pip-version-check -e "$(CURDIR)[plot]"
	@touch $@

setup-python: $(VENV)/.installed
	@echo "python package: installed in $(VENV)"

run: setup
	$(PYTHON) -m harness run

experiments: setup
	$(PYTHON) -m harness experiment

unit: setup-python
	$(PYTHON) -m pytest -q

e2e: setup-python
	$(PYTHON) -m pytest -q -rs -m e2e

# fault injection (disk full, panics, hangs, SIGINT/SIGKILL, a damaged cache): root; 11 min warm
# (measured); part of `make test` (cold CI: ~8 min builds + e2e + 11 min, well under 60)
faults: setup-python
	$(PYTHON) -m pytest -q -rs -m faults tests/faults

test: setup unit e2e faults

bench: setup
	$(PYTHON) -m harness.jobs.bench $(if $(COLD),--cold) $(if $(ONLY),--only $(ONLY))

bench-grading: setup
	$(PYTHON) -m harness.jobs.bench grading $(ZIP)

soak: setup-python
	$(PYTHON) -m harness.jobs.bench soak $(or $(N),20)

clean: setup-python
	$(PYTHON) -m harness clean

# The KVM-API lab (seed 003): x86 /dev/kvm, see docs/kvm-api-lab.md
lab-test: setup-python
	$(PYTHON) -m pytest -q tests/kvmlab

lab-grade: setup-python
	$(PYTHON) -m harness.kvmlab grade $(SUBS) --out $(or $(OUT),lab-results) -j 2

# hw2 (host_cpuid) submissions: see README "Grading hw2 submissions"
grade: setup-python
	$(PYTHON) -m harness grade $(SUBS) --out $(or $(OUT),grades) -j $(or $(J),1)

grade-test-full: setup-python
	$(PYTHON) -m pytest -q -rs -m grade_full tests/grade
