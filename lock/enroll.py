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
# Two photos this unlike are taken for two people: on lfw-dev (int8 pipeline)
# 0.07 % of same-person pairs score below 0.30 and 96 % of different-person
# pairs do.  A photo unlike more than half of the person's other photos and
# templates is refused: one stranger's photo among a person's, or a folder
# holding two people (the photos of the smaller group, or all when equal).
DIFFERENT_PERSON_COSINE = 0.30
# Two photos this similar are one photo (a copy, or the same file given twice):
# the second is skipped, so that copies cannot outvote the person's other photos;
# a photo this similar to one of the person's templates is already stored (the
# same enrollment run again), and is not stored twice.
SAME_PHOTO_COSINE = 0.99
# A hint already given is repeated at most this often (two hints taking turns frame after frame printed
# about 110 lines a minute).
HINT_EVERY_SECONDS = 3.0


@dataclasses.dataclass
class Report:
    """What enrollment did with each input."""

    stored: list[str] = dataclasses.field(default_factory=list)
    rejected: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (what, why)
    already: list[str] = dataclasses.field(default_factory=list)  # usable, and already among the templates

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


def check_identity(matcher, name: str, embs: list[np.ndarray], labels: list[str], *,
                   replace: bool, lookalike: float | None, force: bool = False) -> None:
    """Refuse (EnrollmentError, nothing stored) templates that would confuse the door.

    ``matcher`` is the gallery as it is (see ``Gallery.enroll``'s ``check``).

    - a template at least ``lookalike`` (the match threshold) similar to someone
      else already enrolled: the door could not tell the two apart (it would
      refuse both by the margin rule), e.g. the same photos under a second name;
    - a template added to someone already enrolled that is unlike (below
      :data:`DIFFERENT_PERSON_COSINE`) more than half of their enrolled
      templates: someone else's photos under their name would let that someone
      in.  ``force`` does not skip this one; ``replace`` starts them afresh;
    - a template unlike more than half of this person's others, new and
      enrolled: most likely someone else's (``force`` skips this check only).
    """
    from lock.gallery import name_key

    key = name_key(name)
    own = [] if replace else [t for p in matcher.people if name_key(p) == key for t in matcher.templates(p)]
    for label, e in zip(labels, embs) if lookalike is not None and len(matcher) else ():
        m = matcher.match(e)
        for other, score in ((m.person, m.score), (m.runner_up, m.runner_up_score)):
            if other is not None and name_key(other) != key and score >= lookalike:
                raise EnrollmentError(
                    f"nothing enrolled for {name!r}: {label} looks like {other!r}, who is already enrolled "
                    f"(similarity at or above the match threshold {lookalike}); the door could not tell them "
                    f"apart. If it is the same person, remove or rename {other!r} first; if not, use other photos")
    if own:
        unlike_own = (np.array(embs, np.float32) @ np.array(own, np.float32).T < DIFFERENT_PERSON_COSINE)
        odd = [label for label, row in zip(labels, unlike_own) if 2 * int(row.sum()) > len(own)]
        if odd:
            raise EnrollmentError(
                f"nothing enrolled for {name!r}: these do not look like the {len(own)} template(s) already "
                f"enrolled for {name!r} (similarity below {DIFFERENT_PERSON_COSINE}): {', '.join(odd)}. "
                f"If they are someone else, enroll them under their own name; to start {name!r} afresh from "
                "these photos, enroll with --replace")
    pool = np.array(list(embs) + own, np.float32)
    if force or len(pool) < 2:
        return
    unlike = (pool @ pool.T < DIFFERENT_PERSON_COSINE)[:len(labels)]
    np.fill_diagonal(unlike, False)
    counts = unlike.sum(axis=1)
    odd = [label for label, c in zip(labels, counts) if 2 * c > len(pool) - 1]
    if odd:
        raise EnrollmentError(
            f"nothing enrolled for {name!r}: these do not look like the same person as most of the other "
            f"photos{' and templates' if own else ''} of {name!r} (similarity below "
            f"{DIFFERENT_PERSON_COSINE}): {', '.join(odd)}; enroll each person under their own name "
            "(or, if these really are one person, enroll with --force)")


def enroll_files(pipeline, gallery, name: str, paths: Iterable[Path], *, replace: bool = False,
                 progress: Callable[[Iterable], Iterable] = lambda it: it,
                 lookalike: float | None = None, force: bool = False) -> Report:
    """Enroll ``name`` from image files; each unusable file is reported by name and skipped.

    The usable ones must look like one person and, with ``lookalike`` (the
    match threshold), like no one else enrolled (:func:`check_identity`).  A
    photo already among ``name``'s templates (the same enrollment run again) is
    reported in ``already`` and not stored twice; when all usable photos are, the
    gallery is left untouched and the report returned.
    """
    from lock.gallery import EMBEDDING_DIM, name_key

    report = Report()
    embs, quals = [], []
    own = np.zeros((0, EMBEDDING_DIM), np.float32)  # the person's templates: the same photo is not stored twice
    if not replace:
        matcher = gallery.matcher(skip_damaged=True)
        key = name_key(name)
        own = np.concatenate([own, *(matcher.templates(p) for p in matcher.people if name_key(p) == key)])
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
        same = next((label for label, e in zip(report.stored, embs) if float(e @ emb) > SAME_PHOTO_COSINE), None)
        if same is not None:
            report.rejected.append((str(path), f"the same photo as {same}"))
            continue
        if len(own) and float(np.max(own @ emb)) > SAME_PHOTO_COSINE:
            report.rejected.append((str(path), f"already stored: {name!r} has a template from the same photo"))
            report.already.append(str(path))
            continue
        embs.append(emb)
        quals.append(q)
        report.stored.append(str(path))
    if not embs and report.already:
        return report  # enrolled with these already: nothing to write
    if not embs:
        detail = "; ".join(f"{w}: {why}" for w, why in report.rejected) or "no images given"
        raise EnrollmentError(f"nothing enrolled for {name!r}: no image gave a usable face ({detail})")
    gallery.enroll(name, embs, quals, replace=replace,
                   check=lambda matcher: check_identity(matcher, name, embs, report.stored, replace=replace,
                                                        lookalike=lookalike, force=force))
    return report


def enroll_frames(pipeline, gallery, name: str, frames: Iterator[np.ndarray], *, count: int,
                  timeout: float, say: Callable[[str], None], replace: bool = False,
                  clock: Callable[[], float] = time.monotonic, lookalike: float | None = None) -> Report:
    """Guided enrollment from live frames: ``count`` good, varied views within ``timeout`` s.

    ``say`` receives guidance for the person at the camera ("come closer",
    "turn your head a little").
    """
    report = Report()
    embs: list[np.ndarray] = []
    quals: list[float] = []
    last_hint = ""
    said_at: dict[str, float] = {}
    deadline = clock() + timeout
    timed_out = False
    say(f"look at the camera: {count} good views needed")
    for frame in frames:
        if clock() > deadline:
            timed_out = True
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
        if hint and hint != last_hint and clock() - said_at.get(hint, -HINT_EVERY_SECONDS) >= HINT_EVERY_SECONDS:
            say(hint)
            said_at[hint] = clock()
        last_hint = hint
    if len(embs) < count:
        when = f"within {timeout:.0f} s" if timed_out or clock() > deadline else "before the camera stopped"
        raise EnrollmentError(f"nothing enrolled for {name!r}: only {len(embs)} of {count} good views "
                              f"{when} (last problem: {last_hint or 'none'})")
    views = [f"camera view {i + 1}" for i in range(len(embs))]
    gallery.enroll(name, embs, quals, replace=replace,
                   check=lambda matcher: check_identity(matcher, name, embs, views, replace=replace,
                                                        lookalike=lookalike))
    report.stored = views
    return report
