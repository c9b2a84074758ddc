"""L1's trace: parsing tracefs text, aligning calls to HVCs, explaining changes."""
from pathlib import Path

import pytest

from harness.observe import groundtruth as gt
from harness.observe.groundtruth import CallKey

DATA = Path(__file__).parent / "data"
FID = 0xC6000040
T0, T1 = 501, 502  # thread ids of "CPU 0/KVM" and "CPU 1/KVM"


def hvc(ts, cpu, pid=T0, r0=FID, imm=0):
    comm = f"CPU {pid - T0}/KVM"
    return (f"       {comm}-{pid}     [{cpu:03d}] d..1.  {ts:.6f}: kvm_hvc_arm64: HVC at 0xffff8000080101a4 "
            f"(r0: 0x{r0:016x}, imm: 0x{imm:x})")


def switch_in(ts, cpu, pid=T0, prev=0):
    return (f"          <idle>-{prev}       [{cpu:03d}] d..2.  {ts:.6f}: sched_switch: prev_comm=swapper/{cpu} "
            f"prev_pid={prev} prev_prio=120 prev_state=R ==> next_comm=CPU {pid - T0}/KVM next_pid={pid} next_prio=120")


def migrate(ts, orig, dest, pid=T0, cpu=None):
    return (f"     migration/{orig}-20      [{(cpu if cpu is not None else orig):03d}] d..5.  {ts:.6f}: "
            f"sched_migrate_task: comm=CPU {pid - T0}/KVM pid={pid} prio=120 orig_cpu={orig} dest_cpu={dest}")


def mark(ts, text, cpu=0):
    return f"              sh-900     [{cpu:03d}] .....  {ts:.6f}: tracing_mark_write: {text}"


def test_parse_real_tracefs_excerpt():
    """Excerpts of traces recorded in L1 by a real run (6.1, reference patches): the
    loaded scenario (vCPU threads 85 and 86) and the re-pin of vCPU 0 from pCPU 3 to 2."""
    t = gt.parse(DATA / "l1-trace-6.1.txt")
    assert t.unparsed == 0
    assert {h.pid for h in t.hvcs} == {85, 86}
    assert all(h.func_id == FID and h.imm == 0 for h in t.hvcs)
    assert all(0 <= h.cpu < 4 for h in t.hvcs)
    # comm with spaces on both sides of a switch, and migrations done from softirq context
    assert (103.440110, 0, 76, "R+", 86) in t.switches
    assert (103.701015, 1, 85, 2, 1) in t.migrations
    assert [w for _, w, _ in t.marks] == ["repin", "repin_done"]
    assert t.marks[0][2] == {"vcpu": "0", "from": "3", "to": "2", "tid": "85"}


def test_parse_fields_and_comm_with_spaces():
    text = "\n".join(["# tracer: nop", "#", hvc(10.0, 3), switch_in(10.5, 2), migrate(10.4, 3, 2),
                      mark(10.2, "harness: repin vcpu=0 from=3 to=2 tid=501")])
    t = gt.parse(text)
    assert t.unparsed == 0
    assert t.hvcs[0].cpu == 3 and t.hvcs[0].pid == T0 and t.hvcs[0].func_id == FID
    assert t.switches == [(10.5, 2, 0, "R", T0)]
    assert t.migrations == [(10.4, 3, T0, 3, 2)]
    assert t.marks == [(10.2, "repin", {"vcpu": "0", "from": "3", "to": "2", "tid": "501"})]


def test_parse_5_4_flags_and_tgid_column():
    line = ("       CPU 0/KVM-501   (  490) [002] d..1  1234.500000: kvm_hvc_arm64: HVC at 0xffff000010094f2c "
            "(r0: 0x00000000c6000040, imm: 0x0)")
    t = gt.parse(line)
    assert t.unparsed == 0 and t.hvcs[0].cpu == 2 and t.hvcs[0].pid == 501


def test_function_id_compared_on_32_bits():
    t = gt.parse(hvc(1.0, 1, r0=0xFFFFFFFF00000000 | FID))
    assert CallKey(func_id=FID).matches(t.hvcs[0])


def test_alignment_agreement_and_explained_change():
    lines = [hvc(1.0, 3), hvc(1.1, 3), migrate(1.15, 3, 1), switch_in(1.16, 1), hvc(1.2, 1), hvc(1.3, 1)]
    t = gt.parse("\n".join(lines))
    res = gt.cross_check(t, T0, [3, 3, 1, 1], CallKey(func_id=FID), t0=1.0)
    assert res["aligned"] and res["hvc_events"] == 4 and res["samples"] == 4
    assert res["agreement"] == 1.0
    assert res["changes"] == 1 and res["changes_explained"] == 1 and res["unexplained"] == []
    assert res["explanations"][0]["change"] == "3->1"


def test_disagreement_is_listed_with_time():
    t = gt.parse("\n".join([hvc(1.0, 3), hvc(1.1, 3)]))
    res = gt.cross_check(t, T0, [0, 3], CallKey(func_id=FID), t0=1.0)
    assert res["agreement"] == 0.5
    assert res["disagreements"] == [{"call": 0, "t_s": 0.0, "returned": 0, "handled_on": 3,
                                     "moved_there_before_reply": False}]
    assert res["disagreements_explained"] == "0/1"


def test_preemption_between_hvc_and_read_explains_a_disagreement_and_the_change():
    # call 1's HVC is handled on CPU 3, L1 then moves the thread to 2 before the handler
    # reads vcpu->cpu: the value is 2, and L1 shows the move before the next HVC
    lines = [hvc(1.0, 3), hvc(1.1, 3), migrate(1.12, 3, 2), switch_in(1.13, 2), hvc(1.2, 2)]
    res = gt.cross_check(gt.parse("\n".join(lines)), T0, [3, 2, 2], CallKey(func_id=FID))
    assert res["agreement"] == pytest.approx(2 / 3, abs=1e-5)
    assert res["disagreements_explained"] == "1/1" and res["disagreements"][0]["moved_there_before_reply"]
    assert res["changes"] == 1 and res["changes_explained"] == 1


def test_unexplained_change():
    # the value changed but L1 shows no migration or switch-in onto the new CPU in between
    lines = [hvc(1.0, 3), switch_in(1.05, 3), hvc(1.1, 3)]
    t = gt.parse("\n".join(lines))
    res = gt.cross_check(t, T0, [3, 2], CallKey(func_id=FID))
    assert res["changes"] == 1 and res["changes_explained"] == 0
    assert res["unexplained"][0]["change"] == "3->2"


def test_two_hvcs_per_call_or_none_is_caught():
    t = gt.parse("\n".join([hvc(1.0, 1), hvc(1.01, 1), hvc(1.1, 1), hvc(1.11, 1)]))
    res = gt.cross_check(t, T0, [1, 1], CallKey(func_id=FID))
    assert not res["aligned"] and res["agreement"] is None and "4 HVCs" in res["reason"]
    res = gt.cross_check(gt.parse(""), T0, [1, 1], CallKey(func_id=FID))
    assert not res["aligned"] and res["hvc_events"] == 0


def test_other_threads_and_other_ids_do_not_count():
    lines = [hvc(1.0, 1), hvc(1.0, 2, pid=T1), hvc(1.05, 1, r0=0x84000000), hvc(1.1, 1)]
    res = gt.cross_check(gt.parse("\n".join(lines)), T0, [1, 1], CallKey(func_id=FID))
    assert res["aligned"] and res["other_hvcs"] == {"0x84000000": 1}


def test_learn_key_by_immediate():
    # a design keyed on the HVC immediate, x0 unused (it holds whatever was there)
    lines = [hvc(1.0 + i / 10, 1, r0=0x1B3 + i, imm=5) for i in range(3)] + [hvc(2.0, 1, r0=0x84000000)]
    t = gt.parse("\n".join(lines))
    # x0 varies, so the (x0, imm) pair seen once per call is the immediate's
    key = gt.learn_key(t, T0, samples=1)
    assert key is not None
    by_imm = CallKey(imm=5)
    assert gt.cross_check(t, T0, [1, 1, 1], by_imm)["aligned"]


def test_hvc_calls_grouped_by_vcpu_and_id():
    lines = [hvc(1.0, 1), hvc(1.1, 1), hvc(1.0, 2, pid=T1), hvc(1.2, 1, r0=0x84000000)]
    calls = gt.hvc_calls(gt.parse("\n".join(lines)), {0: T0, 1: T1})
    assert {"vcpu": 0, "func_id": hex(FID), "imm": 0, "count": 2} in calls
    assert {"vcpu": 1, "func_id": hex(FID), "imm": 0, "count": 1} in calls


def test_time_sharing_counts_turns_on_a_cpu():
    lines = [switch_in(1.0, 1, T0), switch_in(1.1, 1, T1), switch_in(1.2, 1, T0), switch_in(1.3, 2, T1)]
    assert gt.time_sharing(gt.parse("\n".join(lines)), {0: T0, 1: T1}) == {"1": 2}


@pytest.mark.parametrize("garbage", ["not a trace line", "CPU 0/KVM-501 [002] d..1. 1.0: kvm_hvc_arm64: junk"])
def test_unparsed_lines_are_counted_not_fatal(garbage):
    assert gt.parse(garbage).unparsed == 1
