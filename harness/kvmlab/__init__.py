"""The KVM-API hypercall lab (seed 003): reference, exit oracle and grader.

Modules, one concept each:
  errors      typed failures naming the stage
  sandbox     running untrusted programs confined (harness/build/sandbox.py; limits, timeout)
  submission  unpacking a submission safely and finding its two sources
  guestapi    reading guest.c: which assignment functions it defines
  build       building the oracle shim, the reference, a submission, the test guest
  oracle      parsing the exit record the shim wrote
  grade       the checks, the verdict and the score
  report      results.json, JUnit XML, evidence text
  cli         python -m harness.kvmlab grade|explain|run-reference
"""
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parents[2] / "labs" / "kvm_api"
