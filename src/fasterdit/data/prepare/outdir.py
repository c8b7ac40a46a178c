"""The output folder of ``fasterdit prepare``: its file names, the checks before any work, and what an
earlier preparation left there (its settings record, its finished shards, its crash leftovers).

Why one module: these are the on-disk half of resuming. Whether a rerun may continue is decided here
(same fingerprint, or an empty folder), and so is which shards it may reuse (headers that match this
run; the rest are moved aside, never deleted).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from fasterdit.data.prepared import read_header, shard_metadata
from fasterdit.errors import ConfigError, DataError
from fasterdit.runtime.files import TMP_PREFIX, atomic_write_text

PREPARE_JSON = "prepare.json"
FILES_TXT = "files.txt"
SKIPPED_TSV = "skipped.tsv"
WARNINGS_TSV = "warnings.tsv"


#: what a files.txt line cannot hold as it is: the backslash (the escape itself), every line break that
#: ``str.splitlines`` knows, and the lone surrogates by which Python holds the bytes of a file name that
#: is not UTF-8 (``os.fsdecode``'s surrogateescape)
_SPECIAL = re.compile("[\\\\\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(\\|u[0-9a-f]{4})")


def escape_name(name: str) -> str:
    r"""``name`` as one line of files.txt: ``\\`` for a backslash, ``\uXXXX`` (lowercase hex) for a line
    break or a byte that is not UTF-8 (``\udcff`` for the byte 0xff); any other name is written as it is.

    Why: a line per file is what makes a shard's ``index`` a line number, and a class folder named
    ``new<LF>line`` used to take two lines and shift every later index onto the wrong file.
    """
    return _SPECIAL.sub(_escape_char, name)


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return "\\\\" if c == "\\" else f"\\u{ord(c):04x}"


def unescape_name(line: str) -> str:
    """The file name of a files.txt line (undoes :func:`escape_name`)."""
    return _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1)[1:], 16)), line)


def read_files_list(out: Path) -> list[str]:
    """The source files of a preparation in OUT, relative to its image folder: line ``i`` of files.txt
    is the file of ``index == i``. A name that is not UTF-8 comes back as ``os.fsdecode`` gives it, so
    ``images / name`` opens the file."""
    try:
        text = (out / FILES_TXT).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{out / FILES_TXT}: cannot read the file list ({err})") from None
    return [unescape_name(line) for line in text.split("\n")[:-1]]


def shard_name(k: int, rank: int) -> str:
    return f"shard-{k:06d}-r{rank:03d}.safetensors"


def check_out(out: Path, images: Path) -> None:
    out_r, img_r = out.resolve(), images.resolve()
    if out_r == img_r or img_r in out_r.parents:
        raise ConfigError(
            "out",
            f"{out} is inside the image folder {images}; it would be read as a class folder. "
            "Choose an output folder outside it",
        )
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a folder")
    _check_writable(out)


def _check_writable(out: Path) -> None:
    """OUT, or the nearest folder above it that exists, must take new files: checked before any work."""
    base = out.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ConfigError("out", f"cannot create {out}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError("out", f"cannot write {out}: no write permission in {base}")


def foreign_entries(out: Path, own: str | None) -> list[str]:
    """Names in OUT that no preparation wrote (hidden files and this run's exported source excepted)."""
    if not out.exists():
        return []
    mine = {own, f"{own}.tmp"} if own else set()
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in mine)


def read_previous_record(out: Path) -> dict[str, Any] | None:
    """The settings record of an earlier preparation in OUT, or None (none, or unreadable: then
    :func:`check_previous` reports it)."""
    try:
        return json.loads((out / PREPARE_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def check_previous(out: Path, record: dict[str, Any], rel: list[str], own: str | None = None) -> str | None:
    """Rank 0: compare with an earlier (interrupted or finished) preparation in OUT. Returns an error
    message, or None after writing prepare.json / files.txt for a fresh start."""
    prev_file = out / PREPARE_JSON
    if prev_file.is_file():
        try:
            prev = json.loads(prev_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return f"{prev_file}: unreadable ({err}); move it away to start over"
        if prev.get("fingerprint") != record["fingerprint"]:
            old, new = prev.get("config", {}), record["config"]
            diffs = [
                f"{k}: {old.get(k)!r} then, {new.get(k)!r} now"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            ]
            return (
                f"{out} holds a preparation with different settings or a different image list "
                f"({'; '.join(diffs) or 'fingerprint differs'}). Rerun with the same settings to resume, "
                "or choose a new --out"
            )
        return None
    if out.exists():
        foreign = foreign_entries(out, own)
        if foreign:
            return (
                f"{out} is not empty and holds no fasterdit preparation ({', '.join(sorted(foreign)[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}); choose an empty or new --out"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / FILES_TXT, "".join(escape_name(r) + "\n" for r in rel))
        atomic_write_text(prev_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as err:
        return f"cannot write {out} ({err.strerror or err})"
    return None


def remove_crash_leftovers(out: Path, block: range) -> None:
    """Delete the temporary shard files of this rank's ``block`` that a crash left behind: incomplete by
    construction. (``shard-*.safetensors.tmp-*`` is how versions before the shared runtime named them.)"""
    patterns = ((f"{TMP_PREFIX}shard-*.safetensors-*", len(TMP_PREFIX)), ("shard-*.safetensors.tmp-*", 0))
    for pattern, skip in patterns:
        for tmp in out.glob(pattern):
            digits = tmp.name[skip + 6 : skip + 12]
            if (int(digits) if digits.isdigit() else -1) in block:
                tmp.unlink(missing_ok=True)


def valid_existing(
    out: Path, k: int, span: range, fingerprint: str, expected: dict[str, tuple[str, tuple[int, ...]]]
) -> tuple[Path, dict] | None:
    """A finished shard k from an earlier run whose header matches this run, or None. Shards that
    do not match are renamed aside (``.stale``), never deleted."""
    for path in sorted(out.glob(f"shard-{k:06d}-r*.safetensors")):
        try:
            meta = shard_metadata(path)
            header, _, _ = read_header(path)
            ok = (
                meta.get("fingerprint") == fingerprint
                and meta.get("shard") == k
                and meta.get("start") == span.start
                and meta.get("stop") == span.stop
            )
            n = int(meta.get("num_items", -1))
            for name, (dtype, shape) in expected.items():
                info = header.get(name)
                ok = ok and info is not None and info["dtype"] == dtype and list(info["shape"]) == [n, *shape]
        except DataError:
            ok = False
        if ok:
            return path, meta
        aside = path.with_name(f"{path.name}.stale-{int(time.time())}")
        os.replace(path, aside)
        print(f"fasterdit prepare: {path.name} does not match this run; moved aside to {aside.name}")
    return None
