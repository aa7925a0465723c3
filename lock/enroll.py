"""Enrollment: turning photos or camera frames of a person into gallery templates.

All-or-nothing: templates are collected first and written to the gallery in
one transaction; if no image gives a good template nothing is stored and the
gallery stays exactly as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from lock.errors import EnrollmentError, ImageError
from lock.imageio import load_image

log = logging.getLogger(__name__)

# Two camera templates this similar add nothing: ask for a little variety.
SAME_VIEW_COSINE = 0.96


@dataclasses.dataclass
class Report:
    """What enrollment did with each input."""

    stored: list[str] = dataclasses.field(default_factory=list)
    rejected: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (what, why)

    def lines(self) -> list[str]:
        return [f"{what}: skipped: {why}" for what, why in self.rejected]


def template_from_frame(pipeline, frame: np.ndarray):
    """(embedding, quality score) of the single face in a frame, or raise ValueError(why)."""
    faces = pipeline.detect(frame)
    if len(faces) == 0:
        raise ValueError("no face found")
    if len(faces) > 1:
        raise ValueError(f"{len(faces)} faces found; use photos with one person only")
    a = pipeline.analyse(frame, faces, 0)
    if not a.quality.ok:
        raise ValueError("; ".join(a.quality.reasons))
    return a.embedding, a.quality.score


def enroll_files(pipeline, gallery, name: str, paths: Iterable[Path], *, replace: bool = False,
                 progress: Callable[[Iterable], Iterable] = lambda it: it) -> Report:
    """Enroll ``name`` from image files; each unusable file is reported by name and skipped."""
    report = Report()
    embs, quals = [], []
    for path in progress(list(paths)):
        try:
            frame = load_image(path)
            emb, q = template_from_frame(pipeline, frame)
        except ImageError as exc:
            report.rejected.append((str(path), str(exc).removeprefix(f"{path}: ")))
            continue
        except ValueError as exc:
            report.rejected.append((str(path), str(exc)))
            continue
        embs.append(emb)
        quals.append(q)
        report.stored.append(str(path))
    if not embs:
        detail = "; ".join(f"{w}: {why}" for w, why in report.rejected) or "no images given"
        raise EnrollmentError(f"nothing enrolled for {name!r}: no image gave a usable face ({detail})")
    gallery.enroll(name, embs, quals, replace=replace)
    return report


def enroll_frames(pipeline, gallery, name: str, frames: Iterator[np.ndarray], *, count: int,
                  timeout: float, say: Callable[[str], None], replace: bool = False,
                  clock: Callable[[], float] = time.monotonic) -> Report:
    """Guided enrollment from live frames: ``count`` good, varied views within ``timeout`` s.

    ``say`` receives guidance for the person at the camera ("come closer",
    "turn your head a little").
    """
    report = Report()
    embs: list[np.ndarray] = []
    quals: list[float] = []
    last_hint = ""
    deadline = clock() + timeout
    say(f"look at the camera: {count} good views needed")
    for frame in frames:
        if clock() > deadline:
            break
        hint = ""
        try:
            emb, q = template_from_frame(pipeline, frame)
        except ValueError as exc:
            hint = str(exc)
        else:
            if embs and max(float(e @ emb) for e in embs) > SAME_VIEW_COSINE:
                hint = "turn your head a little, or move a step"
            else:
                embs.append(emb)
                quals.append(q)
                say(f"view {len(embs)}/{count} captured")
                if len(embs) >= count:
                    break
        if hint and hint != last_hint:
            say(hint)
        last_hint = hint
    if len(embs) < count:
        raise EnrollmentError(f"nothing enrolled for {name!r}: only {len(embs)} of {count} good views "
                              f"within {timeout:.0f} s (last problem: {last_hint or 'none'})")
    gallery.enroll(name, embs, quals, replace=replace)
    report.stored = [f"camera view {i + 1}" for i in range(len(embs))]
    return report
