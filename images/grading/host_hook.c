
/*
 * Grading mode (harness/grade, not part of the reference solution): the host
 * answers host_cpuid for the function ID and HVC immediate named on L1's kernel
 * command line, so a student's guest that chose its own ID can be graded against
 * this host.  host_cpuid_func=N|any (default: the reference ID), host_cpuid_imm=N|any
 * (default: any), host_cpuid_hi=N puts N in the answer's upper 32 bits (does the
 * guest pass 64 bits through?).  With no parameter it behaves as the reference.
 */
static u64 grade_func = KVM_HOST_CPUID_FUNC_ID;
static bool grade_any_func;
static long grade_imm = -1;
static u64 grade_hi;

static int __init grade_func_setup(char *s)
{
	if (!strcmp(s, "any")) {
		grade_any_func = true;
		return 1;
	}
	return kstrtoull(s, 0, &grade_func) ? 0 : 1;
}
__setup("host_cpuid_func=", grade_func_setup);

static int __init grade_imm_setup(char *s)
{
	if (!strcmp(s, "any")) {
		grade_imm = -1;
		return 1;
	}
	return kstrtol(s, 0, &grade_imm) ? 0 : 1;
}
__setup("host_cpuid_imm=", grade_imm_setup);

static int __init grade_hi_setup(char *s)
{
	return kstrtoull(s, 0, &grade_hi) ? 0 : 1;
}
__setup("host_cpuid_hi=", grade_hi_setup);

static int kvm_hvc_call_handler_ref(struct kvm_vcpu *vcpu);

int kvm_hvc_call_handler(struct kvm_vcpu *vcpu)
{
	u32 x0 = vcpu_get_reg(vcpu, 0);
	bool func_ok = grade_any_func || x0 == (u32)grade_func;
	bool imm_ok = grade_imm < 0 || kvm_vcpu_hvc_get_imm(vcpu) == grade_imm;

	if (func_ok && imm_ok) {
		vcpu_set_reg(vcpu, 0, (grade_hi << 32) | (u32)READ_ONCE(vcpu->cpu));
		return 1;
	}
	return kvm_hvc_call_handler_ref(vcpu);
}
/* the reference handler below becomes kvm_hvc_call_handler_ref() */
#define kvm_hvc_call_handler kvm_hvc_call_handler_ref
