"""Grading hw2 (host_cpuid) submissions: intake -> static analysis -> pairings ->
checks -> outputs, one module per concept, data flowing in that order.

    intake      zip/dir -> Submission (safe unpacking, member lookup, flags)
    pdfreport   report.pdf -> pages, thumbnails
    diffcheck   patch format: CRLF, prefixes, strip level, reversed, roles, apply
    static      evidence from the added lines: handler, return value, hvc, IDs
    rubric      the points (YAML, validated)

    pairing     build and boot one (host, guest) pairing, summary + evidence
    checks      pairing summaries -> PASS/FAIL/SKIP checks with points
    similarity  winnowing fingerprints of added lines, pairs above a threshold
    outputs     results.json, junit.xml, grade.md, grades.csv, index.html
    batch       preflight, shards, resume, parallel grading, merge
    cli         ``kvm-harness grade`` / ``grade-merge``
"""
