"""The L1 tracer: host-side ground truth for every hypercall.

While a scenario runs, L1's kernel records, for L2's vCPU threads only (per-event
filters on their thread ids):

- ``kvm:kvm_hvc_arm64``       every HVC the guest issues (guest PC, x0 = function ID, the
                              HVC immediate); the event's CPU is the pCPU that handled it
- ``sched:sched_switch``      each time a vCPU thread is switched in or out, and where
- ``sched:sched_migrate_task`` each time the scheduler moves a vCPU thread to another CPU

plus the harness's own ``trace_marker`` lines (a re-pin, a CPU going offline), so
actions and events share one clock (``mono``: L1's CLOCK_MONOTONIC).  Nothing is
streamed: the trace stays in L1's ring buffer and is copied out once, over SFTP.

    tracer = HostTracer(l1_ssh)
    tracer.start({0: tid0, 1: tid1})
    ...                                  # the workload runs; tracer.mark_argv(...) for actions
    tracer.stop(local_path)              # raw tracefs text, parsed by harness.observe.groundtruth
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from ..core.errors import InfraError

TRACEFS = "/sys/kernel/tracing"
EVENTS = ("kvm/kvm_hvc_arm64", "sched/sched_switch", "sched/sched_migrate_task")
BUFFER_KB = 8192  # per CPU: ~100k events, far more than a scenario makes
REMOTE_COPY = "/tmp/hosttrace.txt"


def filters(tids: Sequence[int]) -> Dict[str, str]:
    """Per-event filter expressions that keep the vCPU threads' events only."""
    def any_of(field: str) -> str:
        return " || ".join(f"{field} == {int(t)}" for t in tids)
    return {
        "kvm/kvm_hvc_arm64": any_of("common_pid"),
        "sched/sched_switch": f"{any_of('prev_pid')} || {any_of('next_pid')}",
        "sched/sched_migrate_task": any_of("pid"),
    }


# One shell script run in L1 with the values as positional arguments (no quoting games).
_START = r"""
set -e
T=$1; kb=$2; shift 2
[ -w "$T/trace" ] || { echo "no tracefs at $T (kernel without CONFIG_EVENT_TRACING?)" >&2; exit 3; }
echo 0 > "$T/tracing_on"
echo > "$T/set_event"
echo mono > "$T/trace_clock"
echo "$kb" > "$T/buffer_size_kb"
echo > "$T/trace"
while [ $# -gt 0 ]; do
    ev=$1; filt=$2; shift 2
    [ -d "$T/events/$ev" ] || { echo "trace event $ev does not exist in this kernel" >&2; exit 4; }
    echo "$filt" > "$T/events/$ev/filter"
    echo 1 > "$T/events/$ev/enable"
done
echo 1 > "$T/tracing_on"
"""

_STOP = r"""
T=$1; out=$2
echo 0 > "$T/tracing_on"
cat "$T/trace" > "$out"
echo > "$T/set_event"
echo 1 > "$T/tracing_on"
grep -h -o 'entries-in-buffer/entries-written: [0-9]*/[0-9]*' "$out" || true
"""


class HostTracer:
    def __init__(self, l1_ssh, tracefs: str = TRACEFS):
        self.ssh = l1_ssh
        self.tracefs = tracefs
        self.active = False

    def start(self, tids: Dict[int, int]) -> None:
        """Clear the buffer and record the three events for these vCPU threads."""
        if not tids:
            raise InfraError("host trace: QMP listed no vCPU threads to trace", stage="host-trace")
        args: List[str] = [self.tracefs, str(BUFFER_KB)]
        for ev, expr in filters(sorted(tids.values())).items():
            args += [ev, expr]
        res = self.ssh.run(["sh", "-c", _START, "hosttrace-start", *args], check=False, stage="host-trace")
        if res.rc != 0:
            raise InfraError(f"host trace: cannot start tracing in L1: {(res.err or res.out).strip()}",
                             stage="host-trace", tail=res.out + res.err)
        self.active = True

    def mark_argv(self, text: str) -> List[str]:
        """argv (for L1) that writes ``text`` into the trace, to prefix an action with."""
        return ["sh", "-c", 'echo "$1" > "$2/trace_marker"', "mark", text, self.tracefs]

    def mark(self, text: str) -> None:
        self.ssh.run(self.mark_argv(text), stage="host-trace")

    def stop(self, local: Path) -> dict:
        """Stop recording, copy the raw trace to ``local``; returns buffer statistics
        (entries in the buffer vs written: a difference means the ring overflowed)."""
        res = self.ssh.run(["sh", "-c", _STOP, "hosttrace-stop", self.tracefs, REMOTE_COPY], check=False,
                           stage="host-trace")
        self.active = False
        if res.rc != 0:
            raise InfraError(f"host trace: cannot stop tracing in L1: {(res.err or res.out).strip()}",
                             stage="host-trace", tail=res.out + res.err)
        self.ssh.get(REMOTE_COPY, Path(local))
        stats = {}
        for word in res.out.split():
            if "/" in word and word.replace("/", "").isdigit():
                in_buf, written = word.split("/")
                stats = {"entries": int(in_buf), "written": int(written), "lost": int(written) - int(in_buf)}
        return stats

    def pause(self, on: bool) -> None:
        """The three events on or off without clearing (the tracing-overhead measurement).
        Off disables the events themselves, so their tracepoints are patched out again:
        with only ``tracing_on`` at 0 the probes would still run (and the cost of tracing
        would be under-stated)."""
        script = 'v=$1; T=$2; shift 2; for ev in "$@"; do echo "$v" > "$T/events/$ev/enable"; done'
        self.ssh.run(["sh", "-c", script, "trace-events", "1" if on else "0", self.tracefs, *EVENTS],
                     stage="host-trace")


def affinity(l1_ssh, tids: Dict[int, int]) -> Dict[str, str]:
    """vCPU -> Cpus_allowed_list of its thread in L1 (shows the setting, does not assume it)."""
    script = 'for t in "$@"; do grep "^Cpus_allowed_list" /proc/$t/status | cut -f2; done'
    order = sorted(tids)
    out = l1_ssh.run(["sh", "-c", script, "affinity", *[str(tids[v]) for v in order]], stage="host-trace").out
    lines = out.split()
    return {str(v): (lines[i] if i < len(lines) else "?") for i, v in enumerate(order)}
