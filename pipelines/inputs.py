"""Expanding a run's inputs (files, directories, globs, a manifest) into an ordered list of fields."""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jp2"}


class InputError(ValueError):
    """The inputs of a run are unusable as a whole (nothing given, a manifest without its columns...)."""


@dataclass(frozen=True)
class FieldInput:
    """One image to process: ``path`` as given (made absolute; symlinks are not resolved, so that a folder of links
    names the smear, not the folder the links point to), its ``smear_id`` and a run-unique ``field_id``."""

    path: Path
    smear_id: str
    field_id: str


def expand_inputs(inputs: list[str], manifest: str | None = None) -> tuple[list[FieldInput], list[str]]:
    """Files are taken as given (any extension: content decides); directories are walked recursively for image
    suffixes; other strings are globs. A manifest CSV (``path,smear_id``; relative paths from its folder) adds its
    rows. Duplicates (the same absolute path as given) are dropped (first wins). The smear id is the manifest's or
    the name of the folder the path was given in (a symlink's own folder). Returns the fields and the notes on what
    was skipped."""
    found: list[tuple[Path, str | None]] = []
    notes: list[str] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            imgs = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
            if len(files) > len(imgs):
                notes.append(f"{p}: skipped {len(files) - len(imgs)} file(s) without an image suffix")
            found += [(f, None) for f in imgs]
        elif p.exists() or p.is_symlink():
            found.append((p, None))
        else:
            matches = sorted(glob.glob(s, recursive=True))
            if not matches:
                if any(ch in s for ch in "*?["):
                    notes.append(f"{s}: no match")
                else:  # a path that does not exist is still a field: its record says so, nothing silently vanishes
                    found.append((p, None))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    found += [(f, None) for f in sorted(mp.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
                else:
                    found.append((mp, None))
    if manifest:
        mpath = Path(manifest)
        if not mpath.is_file():
            raise InputError(f"manifest not found: {mpath}")
        with open(mpath, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise InputError(f"{mpath}: manifest needs a header with columns path,smear_id")
            for row in reader:
                rp = Path(row["path"])
                found.append((rp if rp.is_absolute() else mpath.parent / rp, (row.get("smear_id") or "").strip()
                              or None))
    seen, out, ids = set(), [], set()
    for path, smear in found:
        given = Path(os.path.abspath(path))  # the path as given (absolute, symlinks kept): it names the smear
        key = str(given)
        if key in seen:
            continue
        seen.add(key)
        smear_id = smear or given.parent.name or "smear"
        fid = f"{smear_id}/{given.stem}"
        n = 2
        while fid in ids:
            fid, n = f"{smear_id}/{given.stem}~{n}", n + 1
        ids.add(fid)
        out.append(FieldInput(given, smear_id, fid))
    return out, notes
