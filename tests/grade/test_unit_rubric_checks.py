
import pytest
import yaml

from harness.observe import groundtruth
from harness.grade import checks as chk
from harness.observe.groundtruth import CallKey, HostTrace, Hvc
from harness.grade import flags, outputs, rubric, similarity
from harness.grade.errors import RubricError
from harness.grade.pairing import HI_TAG, CallId, PairingResult, issued_from_trace
from tests.grade.fixtures import fixtures, ref

PIN = {0: 3, 1: 2}


def test_default_rubric_mirrors_assignment():
    r = rubric.load()
    assert {k: c.total for k, c in r.categories.items()} == {"hypercall": 40, "syscall": 40, "report": 20}
    assert r.categories["report"].manual == 20


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d["categories"]["hypercall"]["checks"].__setitem__("hc.pinned", 11), "not the total 40"),
    (lambda d: d["categories"]["syscall"]["checks"].__setitem__("sc.bogus", 1), "sc.bogus: not a syscall check"),
    (lambda d: d["categories"]["syscall"]["checks"].pop("sc.value"), "no points given for sc.value"),
    (lambda d: d.__setitem__("extra", 1), "unknown key extra"),
    (lambda d: d["categories"]["report"].__setitem__("manual", "lots"), "expected a number"),
])
def test_rubric_validation(mutate, msg):
    data = yaml.safe_load(rubric.DEFAULT.read_text())
    mutate(data)
    with pytest.raises(RubricError, match=msg):
        rubric.from_dict(data, "r.yaml")


def result(rets, status="ran", summary=None):
    s = summary or {"scenarios": [{"name": n, "per_vcpu": {v: {"observed_vcpus": [int(v)]} for v in r}}
                                  for n, r in rets.items()], "timings": {"l1_ssh_s": 2}}
    return PairingResult("x", status, rets=rets, summary=s)


def test_hypercall_vcpu_id_and_range():
    res = result({"pinned": {"0": [0] * 5, "1": [1] * 5}, "loaded": {"0": [0, 1, 2]}})
    c = chk.hypercall_checks(res, 4, PIN)
    assert c["hc.pinned"].status == "FAIL" and "the vCPU id" in c["hc.pinned"].reason
    assert c["hc.range"].status == "PASS"
    assert c["hc.ground_truth"].status == "SKIP" and "not recorded" in c["hc.ground_truth"].reason
    assert c["hc.ground_truth"].inconclusive
    res = result({"pinned": {"0": [3] * 5, "1": [(1 << 64) - 1] * 5}})
    c = chk.hypercall_checks(res, 4, PIN)
    assert c["hc.range"].status == "FAIL" and "NOT_SUPPORTED" in c["hc.range"].evidence[0]
    assert c["hc.pinned"].status == "FAIL" and c["hc.l2_vcpus"].status == "PASS"


def l1_view(cpus, rets, key=CallKey(func_id=8), moves=(), tid=100, extra_hvcs=0):
    """A vCPU's ground truth as the harness computes it: HVC k handled on cpus[k] at t=k,
    the workload got rets[k]; moves = (t, orig, dest) migrations of the thread in L1."""
    tr = HostTrace(hvcs=[Hvc(float(k), c, tid, key.func_id or 0, key.imm or 0, 0) for k, c in enumerate(cpus)]
                   + [Hvc(len(cpus) + k + 0.5, 0, tid, key.func_id or 0, key.imm or 0, 0) for k in range(extra_hvcs)],
                   migrations=[(t, d, tid, o, d) for t, o, d in moves])
    return groundtruth.cross_check(tr, tid, rets, key)


def loaded(*gts, lost=0):
    s = {"scenarios": [{"name": "loaded", "l1_trace": {"lost": lost},
                        "per_vcpu": {str(v): {"observed_vcpus": [v], "ground_truth": g} for v, g in enumerate(gts)}}],
         "timings": {}}
    return result({"loaded": {str(v): [0] for v in range(len(gts))}}, summary=s)


def test_ground_truth_race_explained_passes_constant_fails():
    cpus = [0] * 500 + [2] * 500 + [1] * 1000
    # a correct preemptible handler: call 1200 was handled on CPU 1, L1 moved the thread to 3 before the reply
    rets = list(cpus)
    rets[1200] = 3
    g = l1_view(cpus, rets, moves=[(499.5, 0, 2), (999.5, 2, 1), (1200.2, 1, 3), (1200.7, 3, 1)])
    assert g["disagreements_explained"] == "1/1"
    c = chk.ground_truth_check(loaded(g, g).summary["scenarios"][0])
    assert c.status == "PASS" and c.reason.startswith("3998 of 4000 answers are the CPU that handled the HVC in L1, "
                                                     "2 the CPU L1 moved the thread to")
    assert "migrated the vCPU threads 8 times" in c.reason
    assert any("call 1200" in e and "preemption race" in e for e in c.evidence)
    # a constant: most answers are not the handling CPU and L1 shows no move there
    c = chk.ground_truth_check(loaded(l1_view(cpus, [1] * len(cpus), moves=[(499.5, 0, 2)])).summary["scenarios"][0])
    assert c.status == "FAIL" and "1000 of 2000 answers" in c.reason and c.evidence


def test_ground_truth_unexplained_race_fails_and_no_migration_is_inconclusive():
    cpus = [1] * 1000
    rets = list(cpus)
    rets[10] = rets[20] = 2                     # no move to CPU 2 in L1: not a race
    c = chk.ground_truth_check(loaded(l1_view(cpus, rets, moves=[(500.5, 1, 1)])).summary["scenarios"][0])
    assert c.status == "FAIL" and "2 of 1000" in c.reason
    assert any("call 10" in e and "did not move the thread there" in e for e in c.evidence)
    c = chk.ground_truth_check(loaded(l1_view(cpus, list(cpus))).summary["scenarios"][0])
    assert c.status == "SKIP" and c.inconclusive and "did not move" in c.reason


def test_ground_truth_unaligned_fails_host_unless_trace_lost():
    cpus = [1] * 100
    g = l1_view(cpus, list(cpus), extra_hvcs=100)          # two HVCs per call
    assert not g["aligned"]
    c = chk.ground_truth_check(loaded(g).summary["scenarios"][0])
    assert c.status == "FAIL" and "200 HVCs" in c.evidence[0] and "for 100 calls" in c.evidence[0]
    c = chk.ground_truth_check(loaded(g, lost=37).summary["scenarios"][0])
    assert c.status == "SKIP" and c.inconclusive and "lost 37 events" in c.reason


def test_kernel_bug_named():
    s = {"scenarios": [{"name": "loaded", "per_vcpu": {"0": {"observed_vcpus": [0]}}}],
         "kernel_log_findings": [{"where": "l1-console", "signature": "bug",
                                  "line": "BUG: using smp_processor_id() in preemptible [00000000] code"}],
         "timings": {}}
    c = chk.hypercall_checks(result({"loaded": {"0": [1] * 10}}, summary=s), 4, PIN)
    assert c["hc.kernel_clean"].reason.startswith("preemption bug: BUG: using smp_processor_id()")


def test_scores_withhold_inconclusive_points():
    cs = {"hc.builds": chk.Check("hc.builds", "PASS", ""),
          "hc.ground_truth": chk.Check("hc.ground_truth", "SKIP", "no migration", inconclusive=True),
          "hc.range": chk.Check("hc.range", "SKIP", "prerequisite hc.l1_nvhe failed")}
    sc = chk.score(cs, rubric.load())["hypercall"]
    assert sc["inconclusive"] == ["hc.ground_truth"] and sc["inconclusive_points"] == 6
    assert sc["skipped_points"] == 6 + 8


def test_pinned_constant_that_equals_a_vcpu_id_is_named_a_constant():
    c = chk.hypercall_checks(result({"pinned": {"0": [1] * 5, "1": [1] * 5}}), 4, PIN)["hc.pinned"]
    assert c.status == "FAIL" and c.reason.count("the same constant on every vCPU") == 2 and "vCPU id" not in c.reason


def test_a_constant_and_the_vcpu_id_are_said_in_words_in_the_flags():
    """The TA reads "answers one constant" in grades.csv, not only "failed: hc.pinned"."""
    const = chk.hypercall_checks(result({"pinned": {"0": [1] * 5, "1": [1] * 5}}), 4, PIN)["hc.pinned"]
    vcpu = chk.hypercall_checks(result({"pinned": {"0": [0] * 5, "1": [1] * 5}}), 4, PIN)["hc.pinned"]
    good = chk.hypercall_checks(result({"pinned": {str(v): [p] * 5 for v, p in PIN.items()}}), 4, PIN)["hc.pinned"]
    assert (const.finding, vcpu.finding, good.finding) == ("constant", "vcpu-id", "")
    assert good.status == "PASS"
    as_dict = lambda c: {"id": c.id, "finding": c.finding}  # noqa: E731
    assert flags.words({"checks": [as_dict(const)]}) == ["answers one constant, not the pCPU"]
    assert flags.words({"checks": [as_dict(vcpu)]}) == ["answers the vCPU id, not the pCPU"]


def test_failed_build_skips_dependents_other_half_untouched():
    res = PairingResult("hypercall", "build-failed", why="host kernel does not build: error: x")
    c = chk.hypercall_checks(res, 4, PIN)
    assert c["hc.builds"].status == "FAIL" and all(c[k].status == "SKIP" for k in c if k != "hc.builds")


def test_l2_that_does_not_boot_fails_l2_vcpus_not_l1():
    res = PairingResult("hypercall", "boot-failed", why="l2-ssh: L2's kernel crashed: Kernel panic",
                        error={"stage": "l2-ssh", "tail": "Kernel panic - not syncing"})
    c = chk.hypercall_checks(res, 4, PIN)
    assert c["hc.l1_nvhe"].status == "PASS" and c["hc.l2_vcpus"].status == "FAIL"
    assert c["hc.range"].reason == "prerequisite hc.l2_vcpus failed"
    res.error["stage"] = "l1-boot"
    c = chk.hypercall_checks(res, 4, PIN)
    assert c["hc.l1_nvhe"].status == "FAIL" and c["hc.l2_vcpus"].status == "SKIP"


def test_host_that_breaks_psci_fails_l2_vcpus_with_l2s_own_lines(tmp_path):
    (tmp_path / "l2-console.log").write_text("[    0.56] psci: failed to boot CPU1 (-22)\n"
                                             "[    0.56] CPU1: failed to boot: -22\n[    0.57] other\n")
    res = PairingResult("hypercall", "run-failed", run_dir=str(tmp_path),
                        why="scenario pinned: workload on vCPU 1 exited 3: cannot pin to vCPU 1: Invalid argument",
                        summary={"timings": {"l1_ssh_s": 9}, "scenarios": []})
    c = chk.hypercall_checks(res, 4, PIN)
    assert c["hc.l2_vcpus"].status == "FAIL" and "[    0.56] CPU1: failed to boot: -22" in c["hc.l2_vcpus"].evidence
    assert all(c[i].reason.startswith("prerequisite hc.l2_vcpus failed") for i in ("hc.range", "hc.pinned",
                                                                                   "hc.ground_truth"))


def test_syscall_value_truncation_and_enosys():
    good = [(HI_TAG << 32) | 3] * 4
    res = result({"pinned": {"0": good, "1": [(HI_TAG << 32) | 2] * 4}})
    c = chk.syscall_checks(res, 451, PIN, CallId(8, None, "t"), {})
    assert c["sc.value"].status == "PASS" and c["sc.number"].status == "PASS"
    assert c["sc.one_hvc"].status == "SKIP"
    res = result({"pinned": {"0": [3] * 4, "1": [2] * 4}})
    assert "truncated to 32 bits" in chk.syscall_checks(res, 451, PIN, None, {})["sc.value"].reason
    res = result({"pinned": {"0": [(1 << 64) - 38] * 4, "1": [(1 << 64) - 38] * 4}})
    c = chk.syscall_checks(res, 451, PIN, None, {"syscall": {"name": "__NR_host_cpuid", "nr": 452}})
    assert c["sc.number"].status == "FAIL" and "defines __NR_host_cpuid 452" in c["sc.number"].reason


def test_nothing_learned_from_a_guest_that_never_issues_its_call():
    # what a 6.1 guest whose syscall issues no hvc shows: two TRNG_RND64 calls at boot
    s = {"scenarios": [{"name": "loaded", "per_vcpu": {"0": {"samples": 1500}, "1": {"samples": 1500}},
                        "hvc_calls": [{"vcpu": 0, "func_id": "0xc4000053", "imm": 0, "count": 2}]}]}
    assert issued_from_trace(s) is None
    s["scenarios"][0]["hvc_calls"] = [{"vcpu": 0, "func_id": "0x57", "imm": 0, "count": 2}]
    assert issued_from_trace(s) is None          # not once per call: not the workload's
    s["scenarios"][0]["hvc_calls"] = [{"vcpu": v, "func_id": "0x57", "imm": 0, "count": 1500} for v in (0, 1)]
    assert issued_from_trace(s)[0].func == 0x57


def test_one_hvc_from_trace():
    s = {"scenarios": [{"name": "pinned", "per_vcpu": {"0": {"observed_vcpus": [0], "samples": 4}},
                        "hvc_calls": [{"func_id": "0x8", "imm": 0, "count": 4, "vcpu": 0},
                                      {"func_id": "0x84000000", "imm": 0, "count": 1, "vcpu": 0}]}], "timings": {}}
    cid, n = issued_from_trace(s)
    assert (cid.func, cid.imm, n) == (8, 0, 4)
    rets = [(HI_TAG << 32) | 3] * 4
    s["scenarios"][0]["per_vcpu"]["0"]["ground_truth"] = l1_view([3] * 4, rets)
    res = result({"pinned": {"0": rets}}, summary=s)
    c = chk.syscall_checks(res, 451, {0: 3}, cid, {})["sc.one_hvc"]
    assert c.status == "PASS" and "4 HVCs with x0 = 0x8 for 4 calls" in c.evidence[0]
    s["scenarios"][0]["per_vcpu"]["0"]["ground_truth"] = l1_view([], rets)
    c = chk.syscall_checks(res, 451, {0: 3}, CallId(8, None, "t"), {})["sc.one_hvc"]
    assert c.status == "FAIL" and "never issues the hypercall" in c.reason
    s["scenarios"][0]["per_vcpu"]["0"]["ground_truth"] = l1_view([3] * 4, rets, extra_hvcs=4)
    c = chk.syscall_checks(res, 451, {0: 3}, CallId(8, None, "t"), {})["sc.one_hvc"]
    assert c.status == "FAIL" and "2.00 HVCs per call" in c.reason


def test_scores_from_rubric():
    r = rubric.load()
    cs = {"hc.builds": chk.Check("hc.builds", "PASS", ""), "hc.pinned": chk.Check("hc.pinned", "FAIL", "")}
    sc = chk.score(cs, r)
    assert sc["hypercall"]["points"] == 5 and cs["hc.pinned"].max_points == 12


def test_similarity_pairs():
    f = {x.name: x for x in fixtures("6.1")}
    texts = {"a": f["good-id8"].kvm + f["good-id8"].vm, "b": f["bad-vcpuid"].kvm + f["good-id8"].vm,
             "c": f["good-imm87"].kvm + f["bad-nohvc"].vm}
    boiler = [ref("6.1", "kvm.patch"), ref("6.1", "vm.patch")]
    docs = similarity.build_docs(texts, [ln for t in boiler for ln in similarity.added_lines(t)])
    d = {x.name: x for x in docs}
    assert similarity.score(d["a"], d["b"]) >= 0.6 > similarity.score(d["a"], d["c"])
    assert similarity.fingerprints(["x = 1;"]) == set()
    assert not any("__NR_host_cpuid" in ln for ln in d["a"].lines)   # boilerplate removed


def test_similarity_run_with_corpus(tmp_path):
    f = {x.name: x for x in fixtures("6.1")}
    listed = similarity.run({"a": f["good-id8"].kvm + f["good-id8"].vm, "c": f["good-imm87"].kvm + f["bad-nohvc"].vm},
                            {"known/sol.patch": f["bad-vcpuid"].kvm + f["bad-nr"].vm},
                            [ref("6.1", "kvm.patch"), ref("6.1", "vm.patch")], tmp_path)
    assert [(s["a"], s["b"]) for s in listed] == [("a", "corpus:known/sol.patch")]
    assert (tmp_path / listed[0]["view"]).read_text().count('class="m"') >= 1


def test_e2e_follows_the_run_verdict_not_just_the_range():
    s = {"scenarios": [], "verdict": "wrong-pcpu", "verdict_text": "a pinned vCPU reported another pCPU"}
    c = chk.e2e_check(result({"pinned": {"0": [0] * 5, "1": [1] * 5}}, summary=s), 4)
    assert c.status == "FAIL" and "wrong-pcpu" in c.reason        # in range, but the vCPU ids
    s["verdict"] = "ok"
    assert chk.e2e_check(result({"pinned": {"0": [3] * 5}}, summary=s), 4).status == "PASS"


def test_recheck_with_the_learned_id_redoes_the_verdict(tmp_path):
    """The student x student pairing ran with the reference's call key: its verdict
    (hvc-mismatch) is redone for the ID learned from L1's trace, on disk too."""
    import json

    from harness.observe import trace as tr
    from harness.grade.pairing import recheck

    d = tmp_path / "e2e"
    (d / "traces" / "loaded").mkdir(parents=True)
    lines = [f"       CPU 0/KVM-500     [{c:03d}] d..1.  {100 + k:.6f}: kvm_hvc_arm64: HVC at 0xffff800008010000 "
             f"(r0: 0x0000000000000008, imm: 0x0)" for k, c in enumerate([1, 1, 2, 2])]
    lines.insert(2, "       CPU 0/KVM-500     [002] d..3.  101.500000: sched_migrate_task: comm=CPU 0/KVM pid=500 "
                    "prio=120 orig_cpu=1 dest_cpu=2")
    (d / "traces" / "loaded" / "l1-trace.txt").write_text("\n".join(lines) + "\n")
    (d / "traces" / "loaded" / "vcpu0.bin").write_bytes(
        tr.make_trace_bytes([(k, k, 0, c, 1000) for k, c in enumerate([1, 1, 2, 2])], pinned_vcpu=0))
    from harness.jobs import run

    # as the run left it: judged with the reference's ID, the vCPU itself is hvc-mismatch
    per = run.judge_ground_truth({"verdict": "ok", "ground_truth": {"aligned": False, "reason": "0 HVCs"}}, 0)
    assert per["verdict"] == "hvc-mismatch"
    s = {"verdict": "hvc-mismatch", "kernel_log_findings": [],
         "scenarios": [{"name": "loaded", "l1_trace": {"file": "traces/loaded/l1-trace.txt"},
                        "vcpu_threads": {"0": 500}, "per_vcpu": {"0": per}}]}
    r = PairingResult("e2e", "ran", run_dir=str(d), summary=s)
    recheck(r, CallId(8, 0, "L1 trace"))
    gt = s["scenarios"][0]["per_vcpu"]["0"]["ground_truth"]
    assert gt["aligned"] and gt["agreement"] == 1.0 and gt["changes_explained"] == 1
    assert s["verdict"] == "ok" and s["recheck"]["verdict_before"] == "hvc-mismatch"
    assert s["scenarios"][0]["per_vcpu"]["0"]["verdict"] == "ok"
    assert json.loads((d / "summary.json").read_text())["verdict"] == "ok"


def l1_finding(line):
    return {"where": "l1-console", "signature": "bug", "line": line}


def ran(rets, findings=(), l2=False):
    """A pairing that ran to the end: pinned and loaded scenarios, kernel lines of L1 (or L2)."""
    s = {"scenarios": [{"name": n, "per_vcpu": {v: {"observed_vcpus": [int(v)]} for v in r}} for n, r in rets.items()],
         "timings": {"l1_ssh_s": 2},
         "kernel_log_findings": [dict(f, where="l2-console") if l2 else f for f in findings]}
    return result(rets, summary=s)


@pytest.mark.parametrize("nsup", [(1 << 64) - 1, 0xFFFFFFFF], ids=["64-bit -1 (PSCI, 6.1's filter)", "0xFFFFFFFF (SMCCC arch)"])
def test_host_answering_like_an_unpatched_kernel_earns_no_build_points(nsup):
    c = chk.hypercall_checks(ran({"pinned": {"0": [nsup] * 5, "1": [nsup] * 5}, "loaded": {"0": [nsup] * 9}}), 4, PIN)
    for cid in chk.EXISTENCE_GATED["hypercall"]:
        assert c[cid].status == "PASS" and c[cid].gated.startswith("no hypercall was added"), cid
    assert c["hc.range"].finding == "no-hypercall"
    sc = chk.score(c, rubric.load())["hypercall"]
    assert sc["points"] == 0 and sc["reason"].startswith("no hypercall was added: the host answered all 19 calls")
    assert all(c[cid].points == 0 and c[cid].max_points > 0 for cid in chk.EXISTENCE_GATED["hypercall"])
    row = outputs.row(graded(c))
    assert row["hypercall"] == "0" and row["flags"].startswith("no hypercall (answers like an unpatched kernel)")
    md = outputs.markdown(graded(c), rubric.load())
    assert "**hypercall**: 0 / 40: no hypercall was added" in md and "(0: the part does not exist)" in md


def graded(checks, **extra):
    cs = dict(checks)
    return {"id": "s1", "status": "graded", "mode": "full", "scores": chk.score(cs, rubric.load()),
            "checks": [x.to_dict() for x in cs.values()], **extra}


def test_host_answering_a_constant_keeps_its_build_points_and_one_real_answer_is_enough():
    c = chk.hypercall_checks(ran({"pinned": {"0": [1] * 5, "1": [1] * 5}}), 4, PIN)
    assert not any(x.gated for x in c.values())
    assert chk.score(c, rubric.load())["hypercall"]["points"] == 5 + 3 + 2 + 8 + 4   # pinned FAIL, gt not recorded
    assert "no hypercall" not in outputs.row(graded(c))["flags"]
    mixed = chk.hypercall_checks(ran({"pinned": {"0": [(1 << 64) - 1] * 4 + [3], "1": [(1 << 64) - 1] * 5}}), 4, PIN)
    assert not any(x.gated for x in mixed.values())


def test_enosys_syscall_earns_no_build_points():
    e = (1 << 64) - 38
    c = chk.syscall_checks(ran({"pinned": {"0": [e] * 4, "1": [e] * 4}}), 451, PIN, None, {})
    assert c["sc.number"].status == "FAIL" and c["sc.number"].finding == "no-syscall"
    assert c["sc.builds"].status == "PASS" and c["sc.builds"].gated.startswith("no syscall was added: syscall 451")
    sc = chk.score(c, rubric.load())["syscall"]
    assert sc["points"] == 0 and "-ENOSYS on all 8 calls" in sc["reason"]
    assert outputs.row(graded(c))["flags"].startswith("no syscall (-ENOSYS, as on an unpatched kernel)")
    # a syscall that exists but never issues the hypercall keeps them
    c = chk.syscall_checks(ran({"pinned": {"0": [3] * 4, "1": [2] * 4}}), 451, PIN, None, {})
    assert not any(x.gated for x in c.values())


def test_empty_patches_are_no_part():
    from harness.grade import diffcheck

    for data in (b"", b"\n  \n"):
        d = diffcheck.check(data, "host")
        assert d.empty and not d.ok and d.why == "empty (no change to the kernel)"
    assert not diffcheck.check(b"hello\n", "host").empty
    c = chk.hypercall_checks(None, 4, PIN, "kvm.patch: empty (no change to the kernel)")
    chk.gate(c, "hypercall", "no hypercall was added: kvm.patch is empty", "empty-kvm", proof="hc.builds")
    sc = chk.score(c, rubric.load())["hypercall"]
    assert sc["points"] == 0 and sc["reason"] == "no hypercall was added: kvm.patch is empty"
    assert outputs.row(graded(c))["flags"].startswith("no hypercall (kvm.patch is empty)")


@pytest.mark.parametrize("line,kind,words", [
    ("BUG: scheduling while atomic: CPU 0/KVM/143/0x00000002", "preempt-leak", "preemption left disabled"),
    ("note: CPU 0/KVM[143] exited with preempt_count 1", "preempt-leak", "preemption left disabled"),
    # what 6.1's L1 printed first for the bad-preempt fixture (the count near its 8-bit limit)
    ("[   78.433437] WARNING: CPU: 3 PID: 84 at preempt_count_add+0xac/0xbc", "preempt-leak", "preemption left disabled"),
    ("BUG: using smp_processor_id() in preemptible [00000000] code: CPU 0/KVM/143", "smp-preemptible",
     "preemption bug (smp_processor_id in preemptible code)"),
    ("BUG: sleeping function called from invalid context at kernel/locking/mutex.c:283", "sleep-in-atomic",
     "sleeps in atomic context"),
    ("Internal error: Oops: 96000004 [#1] PREEMPT SMP", "oops", "kernel crash (Oops)"),
    ("WARNING: CPU: 1 PID: 143 at arch/arm64/kvm/arm.c:1000 kvm_arch_vcpu_ioctl_run", "kernel-warning", "kernel warnings"),
])
def test_kernel_lines_named_in_words(line, kind, words):
    assert flags.bug_kind([line]) == kind
    c = chk.hypercall_checks(ran({"pinned": {"0": [3] * 5, "1": [2] * 5}}, [l1_finding(line)]), 4, PIN)
    assert c["hc.kernel_clean"].status == "FAIL" and c["hc.kernel_clean"].finding == kind
    assert outputs.row(graded(c))["flags"].startswith(words + (" in L1" if kind in flags.SERIOUS +
                                                               ("smp-preemptible",) else ""))


def test_a_leaked_preempt_count_caps_the_part_well_below_full():
    r = rubric.load()
    good = {"pinned": {"0": [3] * 5, "1": [2] * 5}}
    c = chk.hypercall_checks(ran(good, [l1_finding("BUG: scheduling while atomic: CPU 0/KVM/143/0x00000002")]), 4, PIN)
    for cid in ("hc.ground_truth",):   # as if L1's trace agreed: only the kernel's lines are wrong
        c[cid] = chk.Check(cid, "PASS", "agrees")
    sc = chk.score(c, r)["hypercall"]
    assert sc["points"] == 20 and sc["capped"] == {"at": 20, "by": "preempt-leak", "check": "hc.kernel_clean",
                                                    "before": 36}
    assert "capped at 20 of 40" in sc["reason"] and "preemption left disabled" in sc["reason"]
    assert c["hc.kernel_clean"].reason.startswith("preemption left disabled: BUG: scheduling while atomic")
    row = outputs.row(graded(c))
    assert row["hypercall"] == "20" and row["flags"].startswith("preemption left disabled in L1; hypercall capped at 20")
    # smp_processor_id() in preemptible code: the 4 kernel-clean points, no cap
    c = chk.hypercall_checks(ran(good, [l1_finding("BUG: using smp_processor_id() in preemptible [00000000] code")]),
                             4, PIN)
    c["hc.ground_truth"] = chk.Check("hc.ground_truth", "PASS", "agrees")
    assert chk.score(c, r)["hypercall"]["points"] == 36 and "capped" not in chk.score(c, r)["hypercall"]
    # the same leak in the guest's syscall caps the syscall part
    rets = {"pinned": {"0": [(HI_TAG << 32) | 3] * 4, "1": [(HI_TAG << 32) | 2] * 4}}
    c = chk.syscall_checks(ran(rets, [l1_finding("BUG: scheduling while atomic: host_cpuid/99/0x00000002")], l2=True),
                           451, PIN, CallId(8, None, "t"), {})
    c["sc.one_hvc"] = chk.Check("sc.one_hvc", "PASS", "one")
    assert chk.score(c, r)["syscall"]["points"] == 20


@pytest.mark.parametrize("caps,msg", [({"bogus": 1}, "caps.bogus: not a finding that caps a part"),
                                      ({"preempt-leak": 41}, "more than the total 40"),
                                      ({"preempt-leak": "half"}, "expected a number")])
def test_rubric_caps_validated(caps, msg):
    data = yaml.safe_load(rubric.DEFAULT.read_text())
    data["categories"]["hypercall"]["caps"] = caps
    with pytest.raises(RubricError, match=msg):
        rubric.from_dict(data, "r.yaml")
    assert rubric.load().categories["hypercall"].caps["preempt-leak"] == 20
