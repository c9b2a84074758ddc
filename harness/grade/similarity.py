"""Similarity of submissions' added lines, by winnowing (Schleimer, Wilkerson, Aiken,
"Winnowing: local algorithms for document fingerprinting", SIGMOD 2003), written here.

1. Text: the added lines of kvm.patch and vm.patch; comments dropped.
2. Tokens: C tokens; numbers -> N, string literals -> S (identifiers are kept: renaming
   every variable is rarer than copying, and keeping them avoids matching every pair
   of short handlers).  Lines that every solution writes (the reference patches' added
   lines, and lines found in more than half of the batch) are removed first.
3. k-grams of K tokens are hashed; in every window of W consecutive hashes the
   minimum is kept (rightmost on ties): any match of K+W-1 tokens shares a fingerprint.
4. Score of a pair = shared fingerprints / fingerprints of the smaller side.
Pairs at or above the threshold are listed, with a side-by-side page per pair.
"""
from __future__ import annotations

import hashlib
import html
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Set, Tuple

K = 8
W = 4
THRESHOLD = 0.6
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|0[xX][0-9a-fA-F]+|\d+|[A-Za-z_]\w*|->|<<|>>|[^\s\w]')


@dataclass
class Doc:
    name: str
    lines: List[str]          # normalised added lines (after removing common ones)
    prints: Set[int]


def added_lines(patch_text: str) -> List[str]:
    text = "\n".join(ln[1:] for ln in patch_text.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]


def tokens(line: str) -> List[str]:
    out = []
    for t in _TOKEN.findall(line):
        if t[0] == '"':
            out.append("S")
        elif t[0].isdigit():
            out.append("N")
        else:
            out.append(t)
    return out


def fingerprints(lines: List[str], k: int = K, w: int = W) -> Set[int]:
    toks = [t for ln in lines for t in tokens(ln)]
    hashes = [int.from_bytes(hashlib.blake2b(" ".join(toks[i:i + k]).encode(), digest_size=8).digest(), "big")
              for i in range(len(toks) - k + 1)]
    if not hashes:
        return set()
    if len(hashes) <= w:
        return {min(hashes)}
    picked = set()
    for i in range(len(hashes) - w + 1):
        window = hashes[i:i + w]
        m = min(window)
        picked.add(m)
    return picked


def build_docs(texts: Dict[str, str], boilerplate: List[str]) -> List[Doc]:
    per = {n: added_lines(t) for n, t in texts.items()}
    common = set(boilerplate)
    count = Counter(ln for lines in per.values() for ln in set(lines))
    if len(per) >= 4:
        common |= {ln for ln, c in count.items() if c > len(per) / 2}
    docs = []
    for n, lines in sorted(per.items()):
        kept = [ln for ln in lines if ln not in common]
        docs.append(Doc(n, kept, fingerprints(kept)))
    return docs


def score(a: Doc, b: Doc) -> float:
    if not a.prints or not b.prints:
        return 0.0
    return len(a.prints & b.prints) / min(len(a.prints), len(b.prints))


def compare(docs: List[Doc], corpus: List[Doc] = (), threshold: float = THRESHOLD) -> List[Tuple[Doc, Doc, float]]:
    pairs = []
    for i, a in enumerate(docs):
        for b in list(docs[i + 1:]) + list(corpus):
            s = score(a, b)
            if s >= threshold:
                pairs.append((a, b, s))
    return sorted(pairs, key=lambda p: -p[2])


def side_by_side(a: Doc, b: Doc, s: float, path: Path) -> None:
    shared_a = {ln for ln in a.lines if ln in set(b.lines)}
    cols = []
    for d in (a, b):
        body = "\n".join(f'<span class="{"m" if ln in shared_a else ""}">{html.escape(ln)}</span>' for ln in d.lines)
        cols.append(f"<td><h3>{html.escape(d.name)}</h3><pre>{body}</pre></td>")
    path.write_text(f"""<!doctype html><meta charset="utf-8"><title>{html.escape(a.name)} vs {html.escape(b.name)}</title>
<style>td{{vertical-align:top;width:50%}} pre{{font-size:80%;white-space:pre-wrap}} .m{{background:#ffe08a}}</style>
<p>similarity {s:.2f} (winnowing, k={K}, w={W}); highlighted: lines present in both (after removing boilerplate)</p>
<table><tr>{''.join(cols)}</tr></table>""")


def run(texts: Dict[str, str], corpus_texts: Dict[str, str], boilerplate_texts: List[str], out: Path,
        threshold: float = THRESHOLD) -> List[dict]:
    boiler = [ln for t in boilerplate_texts for ln in added_lines(t)]
    docs = build_docs(texts, boiler)
    corpus = [Doc(f"corpus:{d.name}", d.lines, d.prints) for d in build_docs(corpus_texts, boiler)] if corpus_texts else []
    sim_dir = out / "similarity"
    sim_dir.mkdir(parents=True, exist_ok=True)
    listed = []
    for a, b, s in compare(docs, corpus, threshold):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{a.name}__{b.name}") + ".html"
        side_by_side(a, b, s, sim_dir / name)
        listed.append({"a": a.name, "b": b.name, "score": round(s, 3), "view": f"similarity/{name}"})
    return listed
