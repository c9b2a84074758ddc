"""harness/build/buildlog.py on build logs shaped like real ones (kbuild at -j2 with gcc 12,
binutils 2.40): the first error, named by file, tool and message, found wherever
parallel make put it."""
from __future__ import annotations

from harness.build import buildlog

CC_LINES = [f"  CC      arch/arm64/kvm/{n}.o" for n in
            ("arm", "mmu", "mmio", "psci", "hypercalls", "pvtime", "inject_fault", "regmap", "va_layout")]

ASM_ERROR_J2 = "\n".join([
    "$ cd /kcache/wt/x-guest/src && make -C . O=../build ARCH=arm64 -j2 Image",
    "  CC      kernel/sys.o",
    CC_LINES[0], CC_LINES[1],
    "{standard input}: Assembler messages:",
    CC_LINES[2],
    "{standard input}:77: Error: undefined symbol r0 used as an immediate value",
    CC_LINES[3],
    "make[3]: *** [scripts/Makefile.build:250: kernel/sys.o] Error 1",
    CC_LINES[4],
    "make[2]: *** [scripts/Makefile.build:500: kernel] Error 2",
    *CC_LINES[5:],
    "make[1]: *** [/kcache/wt/x-guest/src/Makefile:1992: .] Error 2",
    "make: *** [Makefile:179: sub-make] Error 2",
])

CC_ERROR = "\n".join([
    "  CC      kernel/fork.o",
    "  CC      kernel/sys.o",
    "kernel/sys.c: In function '__do_sys_host_cpuid':",
    CC_LINES[0],
    "kernel/sys.c:2893:16: error: 'cpu' undeclared (first use in this function)",
    " 2893 |         return cpu;",
    "      |                ^~~",
    "kernel/sys.c:2893:16: note: each undeclared identifier is reported only once",
    "kernel/sys.c:2901:1: error: control reaches end of non-void function [-Werror=return-type]",
    "make[3]: *** [scripts/Makefile.build:250: kernel/sys.o] Error 1",
    "make: *** [Makefile:179: sub-make] Error 2",
])

LINK_ERROR = "\n".join([
    "  AR      vmlinux.a",
    "  LD      vmlinux.o",
    "  MODPOST vmlinux.symvers",
    "  LD      .tmp_vmlinux.kallsyms1",
    "aarch64-linux-gnu-ld: arch/arm64/kernel/sys.o:(.rodata+0xde0): undefined reference to "
    "`__arm64_sys_get_cpuid'",
    "make[1]: *** [scripts/Makefile.vmlinux:34: vmlinux] Error 1",
    "make: *** [Makefile:179: sub-make] Error 2",
])

LINK_ERROR_FUNC = "\n".join([
    "aarch64-linux-gnu-ld: kernel/sys.o: in function `host_cpuid':",
    "sys.c:(.text+0x1c): undefined reference to `kvm_hypercall'",
    "make[1]: *** [scripts/Makefile.vmlinux:34: vmlinux] Error 1",
])

DISK_FULL_AT_LINK = "\n".join([
    "  CC      kernel/sys.o",
    "  AR      kernel/built-in.a",
    "  LD      vmlinux.o",
    "aarch64-linux-gnu-ld: final link failed: No space left on device",
    "make[1]: *** [scripts/Makefile.vmlinux_o:61: vmlinux.o] Error 1",
    "make: *** [Makefile:179: sub-make] Error 2",
])

KCONFIG_ERROR = "\n".join([
    "  HOSTCC  scripts/kconfig/conf.o",
    "arch/arm64/Kconfig:42: syntax error",
    "arch/arm64/Kconfig:41: invalid statement",
    "make[2]: *** [scripts/kconfig/Makefile:77: allnoconfig] Error 1",
])

OOM = "\n".join([
    "  CC      mm/page_alloc.o",
    "aarch64-linux-gnu-gcc: fatal error: Killed signal terminated program cc1",
    "compilation terminated.",
    "make[3]: *** [scripts/Makefile.build:250: mm/page_alloc.o] Error 1",
])


def test_assembler_error_interleaved_with_another_job_names_the_source_file():
    f = buildlog.first_error(ASM_ERROR_J2)
    assert f is not None
    assert f.headline() == "kernel/sys.c: assembler: undefined symbol r0 used as an immediate value"
    assert f.tool == "assembler" and f.file == "kernel/sys.c" and f.line is None  # 77 is a line of the .s
    assert "{standard input}:77: Error" in f.context
    assert "make: *** [Makefile:179: sub-make]" not in f.context.splitlines()[:3]
    assert f.resource is None


def test_assembler_error_in_a_real_S_file_keeps_its_line():
    f = buildlog.first_error("arch/arm64/kernel/entry.S:120: Error: unknown mnemonic `hvcc' -- `hvcc #0'\n")
    assert f.headline() == "arch/arm64/kernel/entry.S:120: assembler: unknown mnemonic `hvcc' -- `hvcc #0'"


def test_object_maps_to_S_when_only_that_exists():
    text = "{standard input}:3: Error: bad\nmake[3]: *** [scripts/Makefile.build:250: arch/arm64/kernel/hyp.o] Error 1"
    f = buildlog.first_error(text, exists=lambda rel: rel.endswith(".S"))
    assert f.file == "arch/arm64/kernel/hyp.S"


def test_compiler_error_first_one_with_line():
    f = buildlog.first_error(CC_ERROR)
    assert f.headline() == "kernel/sys.c:2893: compiler: 'cpu' undeclared (first use in this function)"
    assert f.others == ["kernel/sys.c:2901: compiler: control reaches end of non-void function "
                        "[-Werror=return-type]"]
    assert "return cpu;" in f.context


def test_linker_undefined_reference():
    f = buildlog.first_error(LINK_ERROR)
    assert f.tool == "linker"
    assert f.headline() == "linker: undefined reference to __arm64_sys_get_cpuid (in arch/arm64/kernel/sys.o)"


def test_linker_undefined_reference_after_in_function_line():
    f = buildlog.first_error(LINK_ERROR_FUNC)
    assert f.headline() == "sys.c: linker: undefined reference to kvm_hypercall (in kernel/sys.o)"


def test_disk_full_at_link_is_the_machine():
    f = buildlog.first_error(DISK_FULL_AT_LINK)
    assert f.tool == "linker" and "No space left on device" in f.message
    assert f.resource == "no space left on device"
    assert buildlog.exhaustion(DISK_FULL_AT_LINK) == "no space left on device"


def test_compiler_killed_by_the_oom_killer_is_the_machine():
    f = buildlog.first_error(OOM)
    assert f.tool == "compiler" and f.resource.startswith("out of memory")


def test_kconfig_error():
    f = buildlog.first_error(KCONFIG_ERROR)
    assert f.headline() == "arch/arm64/Kconfig:42: kconfig: syntax error"


def test_no_error_line():
    assert buildlog.first_error("  CC      kernel/sys.o\n  LD      vmlinux\n") is None
    assert buildlog.exhaustion("  CC      kernel/sys.o\n") is None


def test_failed_objects_in_order_without_duplicates():
    text = ASM_ERROR_J2 + "\n" + "make[3]: *** [scripts/Makefile.build:250: mm/slub.o] Error 1\n" \
        + "make[3]: *** [scripts/Makefile.build:250: kernel/sys.o] Error 1\n"
    assert buildlog.failed_objects(text) == ["kernel/sys.o", "mm/slub.o"]


def test_error_word_in_a_file_name_is_not_an_error():
    text = "  CC      drivers/base/error_report.o\n  CC      lib/errname.o\n"
    assert buildlog.first_error(text) is None


def test_fixdep_write_failure_is_the_machines():
    # seen on a full disk: fixdep could not write the dependency file; no ENOSPC in the log
    log = ("  CC      mm/truncate.o\n fixdep: not all data was written to the output\n"
           "make[4]: *** [scripts/Makefile.build:255: mm/truncate.o] Error 1\n")
    assert buildlog.exhaustion(log) == "a write failed (the disk is full or failing)"
