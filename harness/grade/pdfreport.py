"""report.pdf: is it a PDF, how many pages, and thumbnails for the human who grades it.

poppler's pdfinfo/pdftoppm parse the untrusted file inside the sandbox (no network,
read-only, time and memory limits).  A file that is not a PDF is named as such (with
what it looks like), never a crash of the grader."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..build import sandbox
from ..core.deadline import scaled

MAX_THUMBS = 6


@dataclass
class ReportInfo:
    present: bool
    valid: bool = False
    pages: int = 0
    why: str = ""                         # when not valid
    thumbnails: List[str] = field(default_factory=list)   # relative to the submission's output dir

    def to_dict(self) -> dict:
        return {"present": self.present, "valid": self.valid, "pages": self.pages, "why": self.why,
                "thumbnails": self.thumbnails}


def sniff(data: bytes) -> str:
    """What a non-PDF looks like, for the evidence."""
    for magic, what in ((b"PK\x03\x04", "a zip archive (docx/odt?)"), (b"\x89PNG", "a PNG image"),
                        (b"\xff\xd8\xff", "a JPEG image"), (b"{\\rtf", "an RTF document"),
                        (b"\xd0\xcf\x11\xe0", "an MS Office document")):
        if data.startswith(magic):
            return what
    try:
        data[:512].decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unknown binary data"


def inspect(pdf: Optional[Path], out_dir: Path) -> ReportInfo:
    if pdf is None:
        return ReportInfo(present=False, why="no report.pdf in the submission")
    head = pdf.read_bytes()[:1024]
    if b"%PDF-" not in head:
        return ReportInfo(present=True, why=f"not a PDF: the file is {sniff(head)}")
    run_dir = out_dir.resolve()
    argv = sandbox.confine(["pdfinfo", str(pdf.resolve())], readable=[pdf.resolve().parent], limits=sandbox.PDF)
    try:
        res = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=scaled(120))
    except subprocess.TimeoutExpired:
        return ReportInfo(present=True, why="pdfinfo timed out")
    m = re.search(r"^Pages:\s+(\d+)", res.stdout, re.M)
    if res.returncode != 0 or not m:
        err = (res.stderr.strip().splitlines() or ["no page count"])[-1]
        return ReportInfo(present=True, why=f"not a valid PDF: pdfinfo: {err}")
    info = ReportInfo(present=True, valid=True, pages=int(m.group(1)))
    thumbs = run_dir / "report"
    thumbs.mkdir(parents=True, exist_ok=True)
    argv = sandbox.confine(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", str(MAX_THUMBS),
                            str(pdf.resolve()), str(thumbs / "page")],
                           readable=[pdf.resolve().parent], writable=[thumbs], limits=sandbox.PDF)
    try:
        subprocess.run(argv, capture_output=True, timeout=scaled(180))
    except subprocess.TimeoutExpired:
        pass
    info.thumbnails = [str(p.relative_to(run_dir)) for p in sorted(thumbs.glob("page*.png"))]
    if not info.thumbnails:
        info.why = "pdftoppm rendered no page"
    return info
