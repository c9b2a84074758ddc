// SPDX-License-Identifier: GPL-2.0
/*
 * sys_host_cpuid, grading variant (harness/grade): the reference syscall, plus
 * kernel command-line parameters that make the guest issue another function ID
 * and HVC immediate, so a student's host can be graded with this guest:
 *   host_cpuid.func=N  the value put in x0 (default: the reference ID 0xC6000040)
 *   host_cpuid.imm=N   the HVC immediate, 0..65535 (default 0)
 * The immediate is part of the instruction, so every "hvc #i; ret" is assembled
 * once into a table and the syscall branches to entry i.
 */
#include <linux/arm-smccc.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/syscalls.h>

#define HOST_CPUID_FUNC_ID						\
	ARM_SMCCC_CALL_VAL(ARM_SMCCC_FAST_CALL, ARM_SMCCC_SMC_64, 6, 0x40)

static unsigned long func_id = HOST_CPUID_FUNC_ID;
static unsigned long imm;

static int __init func_setup(char *s)
{
	return kstrtoul(s, 0, &func_id) ? 0 : 1;
}
__setup("host_cpuid.func=", func_setup);

static int __init imm_setup(char *s)
{
	if (kstrtoul(s, 0, &imm) || imm > 0xffff) {
		imm = 0;
		return 0;
	}
	return 1;
}
__setup("host_cpuid.imm=", imm_setup);

extern char host_cpuid_hvc_table[];
asm(".pushsection .text, \"ax\"\n"
    ".balign 8\n"
    "host_cpuid_hvc_table:\n"
    ".set host_cpuid_hvc_i, 0\n"
    ".rept 65536\n"
    "hvc #host_cpuid_hvc_i\n"
    "ret\n"
    ".set host_cpuid_hvc_i, host_cpuid_hvc_i + 1\n"
    ".endr\n"
    ".popsection\n");

SYSCALL_DEFINE0(host_cpuid)
{
	register unsigned long x0 asm("x0") = func_id;
	register unsigned long x1 asm("x1") = 0;
	register unsigned long x2 asm("x2") = 0;
	register unsigned long x3 asm("x3") = 0;
	register void *entry asm("x16") = host_cpuid_hvc_table + 8 * imm;

	if (!imm) {
		struct arm_smccc_res res;

		arm_smccc_1_1_hvc(func_id, &res);
		return res.a0;
	}
	asm volatile("blr %[e]"
		     : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3)
		     : [e] "r"(entry)
		     : "x30", "memory");
	return x0;
}
