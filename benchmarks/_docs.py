"""Writing a benchmark's generated section into ``docs/benchmarks.md``."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(title: str, begin: str, end: str, body: str, docs: Path = DOCS) -> None:
    """Put ``title`` + ``body`` between the ``begin``/``end`` markers in ``docs``, replacing
    that section when it is there (from its title to its end marker), else appending it."""
    block = f"{title}\n\n{begin}\n{body}{end}\n"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    start, stop = text.find(title), text.find(end)
    if start != -1 and stop != -1:
        text = text[:start] + block + text[stop + len(end) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    docs.write_text(text)
