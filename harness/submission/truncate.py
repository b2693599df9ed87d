"""Accuracy-log truncation and hashing as the official truncation tool does it.

Logs of 4 KiB or more keep their first and last 4 KiB around a "\\n\\n...\\n\\n" marker;
`accuracy.txt` gets a `hash=<sha256 of the full log>` line. The full log is kept elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path

from harness.submission.rounds import HASH_PATTERN, TRUNCATE_VIEW_BYTES

logger = logging.getLogger(__name__)

_MARKER = "\n\n...\n\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def truncated_text(full: Path, view: int = TRUNCATE_VIEW_BYTES) -> str | None:
    """Head + marker + tail of `full`, or None when it is smaller than `view` (kept as is)."""
    size = full.stat().st_size
    if size < view:
        return None
    # The official tool works on text; LoadGen's log is ASCII, so bytes == characters.
    with full.open("r", encoding="ascii", errors="replace") as src:
        head = src.read(view)
        src.seek(size - view)
        tail = src.read(view)
    return head + _MARKER + tail


def read_hash(accuracy_txt: Path) -> str | None:
    """The value of the first `hash=` line, if any."""
    if not accuracy_txt.is_file():
        return None
    for line in accuracy_txt.read_text().splitlines():
        m = re.match(HASH_PATTERN, line)
        if m:
            return m.group(1)
    return None


def stage_accuracy_log(full_log: Path, accuracy_txt: Path, staged_log: Path, keep_dir: Path) -> str:
    """Copy `full_log` untouched into `keep_dir`, write the truncated copy to `staged_log`
    and append `hash=` (sha256 of the full log) to `accuracy_txt`. Returns the hash."""
    keep_dir.mkdir(parents=True, exist_ok=True)
    kept = keep_dir / full_log.name
    if full_log.resolve() != kept.resolve():
        shutil.copy2(full_log, kept)
    digest = sha256_file(full_log)
    staged_log.parent.mkdir(parents=True, exist_ok=True)
    text = truncated_text(full_log)
    if text is None:
        shutil.copy2(full_log, staged_log)
    else:
        staged_log.write_text(text, encoding="ascii", errors="replace")
    existing = read_hash(accuracy_txt)
    if existing is not None and existing != digest:
        logger.warning("%s already had hash=%s; appending the new one", accuracy_txt, existing)
    if existing != digest:
        content = accuracy_txt.read_text() if accuracy_txt.is_file() else ""
        if content and not content.endswith("\n"):
            content += "\n"
        accuracy_txt.write_text(content + f"hash={digest}\n")
    logger.info("truncated %s -> %s (full copy kept at %s)", full_log, staged_log, kept)
    return digest
