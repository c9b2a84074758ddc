"""kvm-harness grade SUB... --out DIR [-j N] [--shard I/N] [--kernel-tree T | --kernel-git URL --kernel-ref R]
kvm-harness grade-merge DIR... --out DIR

Exit status: 0 graded (whatever the grades), 2 bad input (rubric, config, arguments),
3 the machine cannot grade (preflight or infrastructure failure: nobody graded as failing)."""
from __future__ import annotations

import json
from pathlib import Path

from ..core import config
from . import batch, rubric, similarity

GRADE_CONFIG = config.CONFIGS / "grade.yaml"


def add_parsers(sub, common) -> None:
    g = sub.add_parser("grade", help="grade hw2 submissions (zips, folders, or a folder of them)")
    g.add_argument("subs", nargs="+", metavar="SUB")
    g.add_argument("--out", required=True, help="output directory (results are resumed from it)")
    g.add_argument("-j", "--jobs", type=int, default=1, help="submissions graded in parallel")
    g.add_argument("--shard", metavar="I/N", help="grade only shard I of N (deterministic by submission id)")
    g.add_argument("--rubric", help=f"rubric YAML (default {rubric.DEFAULT.relative_to(config.REPO)})")
    g.add_argument("--corpus", help="folder of known solutions (*.patch) to compare against")
    g.add_argument("--threshold", type=float, default=similarity.THRESHOLD, help="similarity listing threshold")
    g.add_argument("--static-only", action="store_true", help="intake, report and static evidence only (no builds/boots)")
    common(g, patches=False)
    g.set_defaults(func=cmd_grade)
    m = sub.add_parser("grade-merge", help="merge the outputs of grade --shard runs")
    m.add_argument("dirs", nargs="+")
    m.add_argument("--out", required=True)
    m.add_argument("--corpus")
    m.set_defaults(func=cmd_merge)


def grade_config(args):
    """configs/grade.yaml unless -c names another; --kernel-tree/--kernel-git or, with the
    default config, $KVM_HARNESS_KERNEL_TREE choose the tree (as for `kvm-harness run`)."""
    default_config = not args.config
    if default_config:
        args.config = str(GRADE_CONFIG)
    return config.from_args(args, default_config)


def cmd_grade(args) -> int:
    cfg = grade_config(args)
    rub = rubric.load(args.rubric)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = batch.make_context(cfg, rub, out, not args.static_only, print)
    results = batch.grade_batch([Path(s) for s in args.subs], ctx, jobs=args.jobs, shard=batch.parse_shard(args.shard),
                                corpus=Path(args.corpus) if args.corpus else None, threshold=args.threshold)
    print(f"\n{len(results)} graded: {out / 'grades.csv'}, {out / 'index.html'}")
    print((out / "grades.csv").read_text())
    return 0


def cmd_merge(args) -> int:
    out = Path(args.out).resolve()
    res = batch.merge([Path(d) for d in args.dirs], out, Path(args.corpus) if args.corpus else None)
    print(json.dumps({"merged": len(res), "grades": str(out / "grades.csv")}))
    return 0
