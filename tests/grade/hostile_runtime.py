"""Submissions that wedge or crash the stack at run time (issue 18): a hypercall handler
that never returns, one that calls BUG(), one that sleeps 10 s per call, a kvm.patch that
panics L1 at boot, a syscall that spins in the guest's kernel.  Each is a variant of the
profile's reference patches (so its context applies: 5.4, 6.1 and 6.12 alike), one half only, so that one pairing
runs it.  ``part`` is the half it breaks; ``status`` what that pairing must come to."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from tests.grade.fixtures import Fixture, edit, guest_asm, host_returning, ref



@dataclass
class Hostile:
    fixture: Fixture
    part: str                   # hypercall | syscall
    status: str                 # the pairing's status: run-failed | boot-failed
    evidence: Optional[str]     # a line that must be in the failing check's reason/evidence (None: any)


def hostile(profile: str = "6.1") -> List[Hostile]:
    # every profile's handler file has <linux/sched.h> (through kvm_host.h): no include to add
    delay = host_returning(profile, "READ_ONCE(vcpu->cpu)", pre="schedule_timeout_uninterruptible(10 * HZ)")
    boot_panic = edit(ref(profile, "kvm.patch"), "+#define KVM_HOST_CPUID_FUNC_ID\t",
                      "+static int __init host_cpuid_selftest(void)\n+{\n"
                      "+\tpanic(\"host_cpuid: self-test failed\");\n+\treturn 0;\n+}\n"
                      "+device_initcall(host_cpuid_selftest);\n+\n+#define KVM_HOST_CPUID_FUNC_ID\t")
    spin_syscall = guest_asm(profile, body="""
#include <linux/processor.h>
#include <linux/syscalls.h>

SYSCALL_DEFINE0(host_cpuid)
{
	for (;;)
		cpu_relax();
	return 0;
}
""")
    return [
        Hostile(Fixture("h1-spin", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)",
                                                           pre="while (1) cpu_relax()"), None),
                "hypercall", "run-failed", None),
        Hostile(Fixture("h2-bug", profile, host_returning(profile, "READ_ONCE(vcpu->cpu)", pre="BUG()"), None),
                "hypercall", "run-failed", "BUG"),
        Hostile(Fixture("h3-sleep", profile, delay, None), "hypercall", "run-failed", None),
        Hostile(Fixture("h4-bootpanic", profile, boot_panic, None), "hypercall", "boot-failed",
                "Kernel panic - not syncing: host_cpuid: self-test failed"),
        Hostile(Fixture("h5-spinsyscall", profile, None, spin_syscall), "syscall", "run-failed", None),
    ]
