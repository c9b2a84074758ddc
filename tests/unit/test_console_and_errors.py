"""harness/stack/console.py (crash signatures, Console on a real local process) and
harness/core/errors.py (rendering, tails)."""
import threading
import time

import pytest

from harness.core import errors
from harness.stack.console import Console, scan
from harness.core.deadline import Deadline
from harness.core.errors import BootError, BuildError, HarnessError, StageTimeout, tail_of

# -- scan ----------------------------------------------------------------------------------

CLEAN_BOOT = """\
[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x411fd070]
[    0.000000] Linux version 6.1.76 (harness@harness) (aarch64-linux-gnu-gcc 12.2.0) #1 SMP
[    0.000000] Machine model: linux,dummy-virt
[    0.512345] kvm [1]: Hyp mode initialized successfully
[    0.600000] Run /sbin/harness-init as init process
[    0.700000] debug: BUGS file not found, WARNINGS: none
HARNESS-READY l1
"""


def test_clean_boot_log_gives_nothing():
    assert scan(CLEAN_BOOT) == []
    assert scan("") == []


def test_panic_is_fatal():
    f = scan("[    1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n")
    assert [(x.signature, x.fatal) for x in f] == [("panic", True)]
    assert f[0].line.startswith("[    1.0] Kernel panic")


def test_smp_processor_id_bug_is_not_fatal():
    line = "[   12.345678] BUG: using smp_processor_id() in preemptible [00000000] code: CPU 0/KVM/123"
    f = scan(CLEAN_BOOT + line + "\n[   12.4] caller is kvm_hvc_call_handler+0x1c/0x2a0\n")
    assert len(f) == 1
    assert (f[0].signature, f[0].fatal, f[0].line) == ("bug", False, line.strip())


def test_finding_drops_the_shell_prompt_and_escapes_before_the_kernel_line():
    # L1's console shell prompt and its cursor query share the line with the printk
    raw = "l1:/# \x1b[6n[    9.766831] BUG: using smp_processor_id() in preemptible [00000000] code: CPU 0/KVM/78\r"
    f = scan(raw)
    assert [x.line for x in f] == [
        "[    9.766831] BUG: using smp_processor_id() in preemptible [00000000] code: CPU 0/KVM/78"]


def test_finding_without_timestamp_is_kept_whole():
    assert [x.line for x in scan("\x1b[1mBUG: scheduling while atomic\x1b[0m")] == ["BUG: scheduling while atomic"]


@pytest.mark.parametrize("line,sig,fatal", [
    ("[  3.2] WARNING: CPU: 1 PID: 123 at arch/arm64/kvm/hypercalls.c:230 kvm_hvc_call_handler+0x50/0x2a0",
     "warning", False),
    ("[  5.0] Unable to handle kernel NULL pointer dereference at virtual address 0000000000000000",
     "oops", True),
    ("[  5.1] Internal error: Oops: 96000004 [#1] PREEMPT SMP", "oops", True),
    ("[  6.0] Bad mode in Synchronous Abort handler detected on CPU0, code 0x02000000", "hyp-panic", True),
    ("[ 30.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu-stall", False),
    ("[ 40.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [sh:77]", "bug", False),
    ("[ 41.0] Watchdog detected hard LOCKUP on cpu 2", "lockup", False),
    ("[ 50.0] note: CPU 0/KVM[143] exited with preempt_count 1", "preempt-leak", False),
])
def test_signatures(line, sig, fatal):
    f = scan(line)
    assert [(x.signature, x.fatal) for x in f] == [(sig, fatal)]


def test_nvhe_hyp_panic_sequence_is_fatal():
    # what arm64 KVM 6.1 prints when the nVHE hypervisor panics (handle_exit.c)
    text = ("[  6.0] kvm [1]: nVHE hyp panic at: [<ffff800008abc000>] __kvm_nvhe_foo+0x0/0x4!\n"
            "[  6.0] Kernel panic - not syncing: HYP panic:\n"
            "[  6.0] PS:600003c9 PC:0000000000000000 ESR:0000000000000000\n")
    found = scan(text)
    assert [(f.signature, f.fatal) for f in found] == [("hyp-panic", True), ("hyp-panic", True)]
    assert "nVHE hyp panic at" in found[0].line


@pytest.mark.parametrize("line", [
    "[  6.0] kvm [1]: nVHE hyp panic at: [<ffff800008abc000>] __kvm_nvhe_foo+0x0/0x4!",
    "[  6.0] kvm [1]: nVHE hyp BUG at: arch/arm64/kvm/hyp/nvhe/switch.c:300!",
    "[  6.0] kvm [1]: Hyp Offset: 0xfffecc0000000000",
])
def test_hyp_panic_signature_alone(line):
    got = [(f.signature, f.fatal) for f in scan(line)]
    assert got == ([] if "Hyp Offset" in line else [("hyp-panic", True)])


def test_one_finding_per_line_in_order():
    text = "BUG: a\nok\nKernel panic - not syncing: BUG: b\nWARNING: CPU: 0 PID: 1 at x\n"
    assert [f.signature for f in scan(text)] == ["bug", "panic", "warning"]


# -- errors --------------------------------------------------------------------------------

def test_render_contains_stage_kind_tail_and_reproducer(tmp_path):
    e = BuildError("host kernel does not build", tail="line one\nline two", log=tmp_path / "build.log",
                   reproduce=["make", "-C", "/src dir", "Image"])
    text = e.render()
    assert text.splitlines()[0] == ("FAILED at stage 'kernel-build' (the kernel/patch under test): "
                                    "host kernel does not build")
    assert f"log: {tmp_path / 'build.log'}" in text
    assert "  | line one\n  | line two" in text
    assert "reproduce: make -C '/src dir' Image" in text
    assert str(e) == "[kernel-build] host kernel does not build"
    d = e.to_dict()
    assert d["error"] == "BuildError" and d["stage"] == "kernel-build" and d["tail"] == "line one\nline two"
    assert d["reproduce"] == "make -C '/src dir' Image"


def test_stage_and_kind_overrides_and_defaults():
    e = BootError("x", stage="l1-boot", kind=errors.INFRA)
    assert (e.stage, e.kind) == ("l1-boot", "infra")
    assert (BootError("y").stage, BootError("y").kind) == ("boot", "subject")
    assert isinstance(StageTimeout("t"), HarnessError) and StageTimeout("t").stage == "timeout"
    plain = HarnessError("bare").render()
    assert "reproduce" not in plain and "last lines" not in plain and "log:" not in plain


@pytest.mark.parametrize("cls,kind,words,code", [
    (errors.BuildError, "subject", "the kernel/patch under test", 1),
    (errors.BootError, "subject", "the kernel/patch under test", 1),
    (errors.KernelBugError, "subject", "the kernel/patch under test", 1),
    (errors.ConfigError, "input", "your input", 2),
    (errors.PatchError, "input", "your input", 2),
    (errors.SourceError, "input", "your input", 2),
    # the harness's own steps: an SSH timeout, taskset in L1, the workload's build, a short trace
    (errors.StageTimeout, "infra", "the machine or harness", 3),
    (errors.GuestCommandError, "infra", "the machine or harness", 3),
    (errors.WorkloadError, "infra", "the machine or harness", 3),
    (errors.TraceError, "infra", "the machine or harness", 3),
    (errors.InfraError, "infra", "the machine or harness", 3),
    (errors.ImageError, "infra", "the machine or harness", 3),
])
def test_default_kinds_say_whose_fault_in_words(cls, kind, words, code):
    e = cls("m")
    assert (e.kind, e.whose_fault, errors.exit_code(e.kind)) == (kind, words, code)
    assert f"({words}): m" in e.render().splitlines()[0]
    assert e.to_dict()["whose_fault"] == words


def test_unexpected_exception_is_one_line_with_the_traceback_in_a_log(tmp_path):
    def inner():
        raise ValueError("invalid literal for int() with base 10: 'garbage'")

    try:
        inner()
    except ValueError as exc:
        e = errors.unexpected(exc, tmp_path / "logs" / "traceback.log", stage="l2-launch")
    assert (e.kind, e.stage) == ("infra", "l2-launch")
    assert "\n" not in e.message and "unexpected ValueError: invalid literal" in e.message
    assert "test_console_and_errors.py:" in e.message  # where it happened
    tb = (tmp_path / "logs" / "traceback.log").read_text()
    assert tb.startswith("Traceback") and "in inner" in tb
    assert e.log == tmp_path / "logs" / "traceback.log"


def test_tail_read_from_log_when_not_given(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"l{i}\n" for i in range(100)))
    e = HarnessError("m", log=log)
    assert e.tail.splitlines() == [f"l{i}" for i in range(60, 100)]
    assert HarnessError("m", log=tmp_path / "missing.log").tail == ""


def test_tail_of_text_file_and_missing(tmp_path):
    text = "\n".join(f"line {i}" for i in range(50)) + "\n"
    assert tail_of(text, 3) == "line 47\nline 48\nline 49"
    f = tmp_path / "f.log"
    f.write_text(text)
    assert tail_of(f, 2) == "line 48\nline 49"
    assert tail_of(str(f), 2) == "line 48\nline 49"  # a str naming a file is read
    assert tail_of(None) == "" and tail_of(tmp_path / "missing") == ""
    assert tail_of("no such file, just text") == "no such file, just text"
    assert len(tail_of(text).splitlines()) == errors.TAIL_LINES


def test_tail_of_large_file_reads_only_the_end(tmp_path):
    f = tmp_path / "big.log"
    with open(f, "wb") as out:
        out.write(b"x" * 10_000_000 + b"\nend one\nend two\n")
    assert tail_of(f, 2) == "end one\nend two"


def test_tail_of_invalid_utf8(tmp_path):
    f = tmp_path / "b.log"
    f.write_bytes(b"ok\n\xff\xfebad\n")
    assert tail_of(f).splitlines()[-1].endswith("bad")


# -- Console on a real process -------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_slowdown(monkeypatch):
    monkeypatch.setenv("KVM_HARNESS_SLOWDOWN", "1")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie reparented to a non-reaping init is gone too


def _wait_gone(pid: int, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


@pytest.fixture
def consoles(tmp_path):
    made = []

    def make(script: str, name: str = "l1", fast_close: bool = True) -> Console:
        c = Console(["sh", "-c", script], tmp_path / f"{name}-console.log", name)
        if fast_close:  # ptyprocess sleeps 0.1 s per close/terminate step by default
            c.child.ptyproc.delayafterclose = 0.01
            c.child.ptyproc.delayafterterminate = 0.01
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_wait_for_finds_marker_and_close_leaves_no_process(consoles, tmp_path):
    c = consoles("echo hello; sleep 30 & echo SLEEPER=$!; echo HARNESS-READY l1; wait", fast_close=False)
    t0 = time.monotonic()
    m = c.wait_for(r"HARNESS-READY l1\b", Deadline(10, "l1-boot"), "the ready marker")
    assert m.group(0) == "HARNESS-READY l1"
    assert time.monotonic() - t0 < 5
    assert "hello" in c.text() and c.alive()
    sleeper = int(c.wait_for(r"SLEEPER=(\d+)", Deadline(5, "x"), "pid").group(1))
    pid = c.pid
    c.close()
    assert not c.alive()
    assert _wait_gone(pid), "the shell survived close()"
    assert _wait_gone(sleeper), "its child survived close()"
    assert "hello" in (tmp_path / "l1-console.log").read_text()
    assert not c._thread.is_alive()


def _send_when(c: Console, ready, data: str = "go\n") -> threading.Thread:
    """Send ``data`` to the console's process once ``ready()`` holds (polled on the console's
    own condition): the script waits on `read`, so the order is an event, not a sleep."""
    def run():
        with c._cond:
            c._cond.wait_for(ready, timeout=10)
        c.send(data)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_wait_for_respects_start_offset(consoles):
    c = consoles("echo MARK one; read go; echo MARK two; sleep 30")
    c.wait_for("MARK one", Deadline(5, "s"), "first")
    start = c.mark()
    assert "MARK two" not in c.text()  # the script is blocked until we say go
    c.send("go\n")
    m = c.wait_for(r"MARK \w+", Deadline(5, "s"), "second", start=start)
    assert m.group(0) == "MARK two" and m.start() >= start


def test_panic_stops_the_wait_quickly(consoles):
    """A fatal line stops the wait; the lines printed after it (the rest of the oops) are
    still captured: the script prints them only once the panic line has been seen."""
    c = consoles("echo booting; echo 'Kernel panic - not syncing: x'; read go; "
                 "echo 'CPU: 0 PID: 1 Comm: init'; sleep 30")
    _send_when(c, lambda: any(f.fatal for f in c.findings))
    t0 = time.monotonic()
    with pytest.raises(BootError) as ei:
        c.wait_for("HARNESS-READY", Deadline(20, "l1-boot"), "the ready marker")
    assert time.monotonic() - t0 < 1.5
    e = ei.value
    assert e.stage == "l1-boot" and "crashed (panic" in e.message and "not syncing: x" in e.message
    assert "Kernel panic - not syncing: x" in e.tail
    assert "CPU: 0 PID: 1 Comm: init" in e.tail, "the rest of the oops was not waited for"
    assert [f.signature for f in c.findings] == ["panic"]


def test_non_fatal_bug_does_not_stop_the_wait(consoles):
    c = consoles("echo 'BUG: using smp_processor_id() in preemptible [00000000] code: CPU 0/KVM/123'; "
                 "read go; echo HARNESS-READY l1; sleep 30")
    _send_when(c, lambda: bool(c.findings))  # READY only after the BUG line was scanned
    assert c.wait_for("HARNESS-READY l1", Deadline(5, "l1-boot"), "marker")
    assert [(f.signature, f.fatal) for f in c.findings] == [("bug", False)]


def test_exit_raises_boot_error(consoles):
    c = consoles("echo 'early output'; exit 3")
    t0 = time.monotonic()
    with pytest.raises(BootError) as ei:
        c.wait_for("HARNESS-READY", Deadline(20, "l1-boot"), "the ready marker")
    assert time.monotonic() - t0 < 3
    assert "exited before the ready marker" in ei.value.message
    assert "early output" in ei.value.tail and ei.value.stage == "l1-boot"


def test_timeout_raises_stage_timeout(consoles):
    c = consoles("echo still booting; sleep 30")
    t0 = time.monotonic()
    with pytest.raises(StageTimeout) as ei:
        c.wait_for("HARNESS-READY", Deadline(0.15, "l1-boot"), "the ready marker")
    took = time.monotonic() - t0
    assert 0.14 <= took < 1.5
    assert ei.value.stage == "l1-boot" and "no the ready marker" in ei.value.message
    assert ei.value.kind == "subject"  # the kernel under test showed no progress
    assert "still booting" in ei.value.tail
    assert c.alive()  # a timeout does not kill: close() does


def test_abort_callback(consoles):
    c = consoles("sleep 30")
    with pytest.raises(BootError, match="l2-ssh: QEMU went away"):
        c.wait_for("never", Deadline(5, "l2-ssh"), "x", abort=lambda: "QEMU went away")


def test_deadline_parent_bounds_child(monkeypatch):
    from harness.core import deadline as deadline_mod
    now = [1000.0]
    monkeypatch.setattr(deadline_mod.time, "monotonic", lambda: now[0])
    parent = Deadline(0.05, "job")
    child = parent.child(100, "stage")
    assert child.remaining() == pytest.approx(0.05) and child.end == parent.end
    assert not child.expired()
    now[0] += 0.06  # the clock moves: no sleep
    assert child.expired() and child.remaining() == 0
    with pytest.raises(StageTimeout, match="stage: waiting"):
        child.check("waiting")


def test_cli_restores_ctrl_c_even_when_started_with_sigint_ignored():
    """A shell runs background jobs with SIGINT ignored, and Python keeps that: the CLI
    must turn Ctrl-C back on, or a run could not be interrupted (its QEMUs kept)."""
    import subprocess
    import sys

    code = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "from harness import cli\n"
            "try:\n    cli.main(['cache-dir'])\nexcept SystemExit:\n    pass\n"
            "print(signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, signal.SIG_DFL))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "True"


def test_a_ctrl_c_swallowed_by_a_destructor_is_raised_again_by_the_next_wait():
    """Python drops a KeyboardInterrupt raised inside ``__del__`` ("Exception ignored in"):
    found by CI, a Ctrl-C during L1's boot was lost and the run failed 60 s later as an SSH
    timeout.  The remembered signal makes the next deadline check raise it again."""
    import subprocess
    import sys

    code = ("import gc, os, signal\n"
            "from harness.core import interrupts\nfrom harness.core.deadline import Deadline\n"
            "interrupts.install()\n"
            "class Closing:\n    def __del__(self):\n        os.kill(os.getpid(), signal.SIGINT)\n"
            "Closing(); gc.collect()\n"
            "print('survived the destructor', interrupts.requested())\n"
            "try:\n    Deadline(60, 'l1-ssh').expired()\nexcept KeyboardInterrupt:\n    print('raised again')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in r.stderr  # the first raise really was swallowed
    assert r.stdout.splitlines() == ["survived the destructor SIGINT", "raised again"]


def test_cli_reports_a_failure_after_a_swallowed_ctrl_c_as_the_interrupt(monkeypatch, capsys):
    import signal

    from harness import cli
    from harness.core import interrupts
    from harness.core.errors import StageTimeout

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def swallowed_then_timeout(args):
        try:
            interrupts._handler(signal.SIGINT, None)
        except KeyboardInterrupt:
            pass  # what a destructor does with it
        raise StageTimeout("l1-ssh: l1 did not answer SSH", stage="l1-ssh")

    monkeypatch.setattr(cli, "cmd_cache", swallowed_then_timeout)
    try:
        rc = cli.main(["cache-dir"])
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    err = capsys.readouterr().err
    assert rc == 130, err
    assert "interrupted" in err and "FAILED" not in err


def test_a_log_that_stops_being_writable_keeps_the_tools_own_words(tmp_path):
    """Found by CI: with the cache's disk full, the build log itself could not be written,
    so ld's "No space left on device" never reached the report (an empty tail).  The file
    size limit makes the log's file system "full" after 200 bytes."""
    import subprocess
    import sys

    code = ("import resource, signal, sys\n"
            "from harness.core import procs\nfrom harness.core.errors import BuildError\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))\n"
            "script = 'for i in $(seq 40); do echo \"  CC kernel/f$i.o\"; done; "
            "echo \"ld: final link failed: No space left on device\"; exit 1'\n"
            "try:\n"
            f"    procs.run(['sh', '-c', script], stage='kernel-build', log={str(tmp_path / 'build.log')!r},"
            " error=BuildError, what='make Image')\n"
            "except BuildError as e:\n    print(e.kind); print(e.render())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = r.stdout.splitlines()
    assert lines[0] == "infra", r.stdout + r.stderr
    assert "make Image: cannot write its log" in lines[1] and "File too large" in lines[1]
    assert "the command then failed with exit code 1" in lines[1]
    tail = r.stdout.split("--- last lines ---", 1)[1]
    assert "ld: final link failed: No space left on device" in tail and "CC kernel/f40.o" in tail
    assert (tmp_path / "build.log").stat().st_size <= 200
