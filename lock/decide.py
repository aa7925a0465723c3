"""Tracks, multi-frame voting, unknown faces, lockout and schedules.

Pure logic: no threads, no I/O.  Every method takes ``now`` in monotonic
seconds (default: the injected ``clock``) and all windows are measured with
it; ``wall`` (seconds since the epoch) only stamps events, and ``local_time``
only feeds schedules.  The daemon calls, per processed frame::

    ids = decider.observe(boxes, now)             # one track id per box
    for box, tid in zip(boxes, ids):
        if decider.needs_embedding(tid, now):
            embedding, match = ...                # gallery.match(...); None, None if quality/liveness failed
            events += decider.vote(tid, match, now, embedding=embedding)

Choices worth knowing:

* A track that votes for two different people is *conflicted*: it never
  unlocks.  It keeps being embedded and, like any track without an accept,
  raises ``unknown`` after ``unknown_after`` embedded frames.  (A tracker
  swapping faces, or a morphed photo, should not open the door.)
* A track is decided once it raised ``recognized``, ``denied`` or
  ``unknown``; it then needs an embedding only every CHECK_SECONDS (and
  when it is found again after a missed detection), to check that it still
  follows the same face.
* Another face in a track's spot (someone stepped in between two
  detections): two embedded frames in a row that score below SAME_FACE
  against the track's face, and at or above it against each other.  The
  track then starts again, decided afresh, its votes starting with the
  second of them; the earlier face's frames count as an ended track's (not
  as the new face's person's).
* A single frame unlike the track's face (a hand over it, blur) is the
  track's own poor frame: it counts towards ``unknown`` but gives no vote
  (if it would vote for someone other than the track's votes, the track is
  conflicted, as with any frame), and at the ``unknown_after``-th frame it
  does not decide ``unknown`` yet (it may be the next person's first
  frame): the next frame does.  The next embedded frame says whether it was
  another face, however late that frame comes.
* A track remembers the decisions taken in its spot while it lives, through
  such restarts and the shrink rule of :meth:`Decider.observe`: the same
  person let in (or denied) again there is not announced again, so nobody
  is let in twice for one arrival; ``unknown`` again is not announced again
  for a face like the one reported (``SAME_FACE``), but is for another
  face.  Either way an ``unknown`` counts towards the lockout.
* Lockout: ``lockout_after`` unknown tracks within ``lockout_window_seconds``
  suspend face unlock for ``lockout_seconds``, doubling with each further
  lockout up to ``lockout_max_seconds``.  Unknowns keep counting while locked
  out, so a continuing attempt engages a longer lockout from that moment.
  The doubling goes back to the base after a successful unlock, or after a
  quiet period of ``lockout_max_seconds`` with neither a lockout nor an
  unknown face.
* A track that ends undecided (a stranger who stepped away, or broke the
  track, before ``unknown_after`` frames) counts towards the lockout by its
  embedded frames: ``unknown_after`` of them weigh as much as one unknown,
  without an ``unknown`` event.  Otherwise a stranger could try
  ``unknown_after - 1`` frames at a time for ever; this way the lockout
  engages after ``lockout_after * unknown_after`` embedded frames however
  they are split into tracks, as it does for whole unknowns.  This holds
  whether or not the track won a vote: a lookalike who wins one vote and
  steps away before the second is exactly the attempt to count.  A
  resident passing by with one embedded frame weighs 1/``unknown_after``
  (a quarter, by default).  A lockout it engages comes from
  :meth:`Decider.ended_events`.
* :meth:`Decider.reconfigure` (SIGHUP) keeps the tracks and the lockout;
  :meth:`Decider.lockout_state` / :meth:`Decider.restore_lockout` carry a
  lockout across a restart of the daemon (state.json), never longer than it
  was engaged for.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import time
from typing import Any, Callable

import numpy as np

from lock.config import DecideSettings, MatchSettings
from lock.events import DENIED, LOCKOUT, RECOGNIZED, UNKNOWN, Event
from lock.schedule import Schedule, TimeSync

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Match:
    """The gallery's answer for one face: best person and runner-up (cosine scores).

    ``person`` is None when the gallery is empty; ``runner_up`` is None when
    fewer than two people are enrolled (``runner_up_score`` is then -1.0).
    """

    person: str | None
    score: float
    runner_up: str | None = None
    runner_up_score: float = -1.0


# A face is behind another when the other's box has at least this much more area (about 1.22x
# the side): a stranger at the door and a face further back differ by far more (2x-6x in area),
# while two people side by side at the door, the largest changing from frame to frame, do not:
# each of them votes in the frames where it is the largest, and neither blocks the other (the
# daemon's rule for the face at the door).  The same ratio keeps a track to one face: a box that
# much smaller than its track's last box is not that face stepping back between two detections
# but a face behind it, seen where it was when the face in front ducked or turned away, and it
# starts a track of its own (which the daemon then finds overshadowed).  A face that grows as fast
# is someone walking up, and keeps its track.
OVERSHADOW_AREA_RATIO = 1.5
# A track missed by this many detections in a row loses its votes: whoever is found in its place next may be
# someone else (a resident who looked up once and went in, a stranger stepping into the spot).  One miss
# is kept: a face is often missed for a frame (turned, blurred), and a resident should not start again.
MISSES_DROP_VOTES = 2
# Two embeddings of one track scoring below this are two faces (cosine of unit FaceNet embeddings).  From
# `bench/lfw.py` on lfw-dev (all pairs of its 5,373 images): 1.1 % of one person's photo pairs (years and
# cameras apart: far more than two frames) score below 0.5, and 0.14 % of two people's pairs reach it (at 0.4:
# 0.24 % and 0.88 %).  A swap it misses is as before this check: the track goes on with the old face's votes
# or decision.
SAME_FACE = 0.5
# A decided track is embedded again at most this often, to check it still follows the same face.  At the
# detection rate for decided tracks (config.DECIDED_DETECT_SECONDS) that is each detection.
CHECK_SECONDS = 0.5


@dataclasses.dataclass
class _Track:
    id: int
    box: np.ndarray                  # (4,) x1, y1, x2, y2 pixels
    first_seen: float
    last_seen: float
    embedded: int = 0                # frames that passed the quality gate and were matched
    votes: dict[str, collections.deque] = dataclasses.field(default_factory=dict)  # person → (time, score)
    conflicted: bool = False
    decision: str | None = None      # RECOGNIZED, DENIED or UNKNOWN once decided
    best: Match | None = None        # best-scoring match seen, for the audit log
    voted: set[str] = dataclasses.field(default_factory=set)  # everyone it ever voted for (lockout attribution)
    overshadowed_until: float = float("-inf")  # a larger face was in view: no votes until then
    missed: int = 0                  # detections in a row that did not find it
    # (decision, person, face embedding) of every decision taken in its spot while it lives, its own and
    # those of the faces before it there (a restart for another face, the shrink rule): see _repeats()
    taken: list[tuple[str, str | None, np.ndarray | None]] = dataclasses.field(default_factory=list)
    face: np.ndarray | None = None   # its last embedding (unit, 128)
    face_at: float = float("-inf")   # when that was taken
    missed_since_face: bool = False  # a detection did not find it since then
    unlike: tuple[np.ndarray, float] | None = None  # the last frame, if unlike its face: (embedding, time)


def _areas(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes (N,4) against (M,4) → (N,M) in [0, 1]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class Decider:
    """Turns per-frame matches into door decisions and events."""

    def __init__(self, settings: DecideSettings, match: MatchSettings, *,
                 schedules: Callable[[str], Schedule | None] = lambda name: None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 local_time: Callable[[], dt.datetime] = dt.datetime.now,
                 time_synced: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        self.match_settings = match
        self._schedules = schedules
        self._clock = clock
        self._wall = wall
        self._local_time = local_time
        self._time_synced = TimeSync() if time_synced is None else time_synced
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        # (time, weight, person) of unknowns; person: who every vote of an ended partial track was for
        self._unknowns: collections.deque[tuple[float, float, str | None]] = collections.deque()
        self._last_unknown: float | None = None
        self._lockout_until: float | None = None
        self._lockout_level = 0      # lockouts since the last reset; the next lasts base * 2**level
        self._lockout_seconds = 0.0  # length of the last lockout engaged
        self._ended: list[Event] = []  # raised by tracks that ended in observe(); see ended_events()
        self.face_changes = 0          # tracks found to follow another face (SAME_FACE), for benchmarks

    def reconfigure(self, settings: DecideSettings, match: MatchSettings) -> None:
        """New settings (SIGHUP): tracks, recent unknowns and any lockout carry on.

        Votes carry on too unless what makes a vote changed (``match.*``, ``decide.votes``,
        ``decide.window_seconds``): a vote cast under a threshold an owner has just raised against false
        accepts must not count under the new one."""
        if match != self.match_settings or (settings.votes, settings.window_seconds) != (
                self.settings.votes, self.settings.window_seconds):
            for track in self._tracks.values():
                track.votes.clear()
        self.settings, self.match_settings = settings, match

    # -- tracks ---------------------------------------------------------------

    def observe(self, boxes: np.ndarray, now: float | None = None) -> list[int]:
        """Assign each box (N,4 pixels) to a track; return one track id per box.

        Boxes join the existing track they overlap most (IoU >= ``track_iou``,
        greedy, best pairs first), unless they have shrunk to 1 / OVERSHADOW_AREA_RATIO
        of its last box or less; the rest start new tracks.  Tracks unseen for
        ``track_timeout_seconds`` end first.  A track that MISSES_DROP_VOTES
        detections in a row did not find keeps its id until then but loses its
        votes.  A box split off by the shrink rule from a decided track that this
        detection did not find is decided afresh, but a decision it repeats (the
        same person let in, or `unknown` again: someone who stepped back) is
        not announced again: no second unlock (an `unknown` again still counts
        towards the lockout: its frames were matched against the gallery again).
        """
        now = self._clock() if now is None else now
        s = self.settings
        for track in [t for t in self._tracks.values() if now - t.last_seen > s.track_timeout_seconds]:
            log.debug("track %d ended", track.id)
            del self._tracks[track.id]
            self._ended += self._count_partial(track, now)

        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        tracks = list(self._tracks.values())
        ids: list[int | None] = [None] * len(boxes)
        if len(boxes) and tracks:
            last = np.stack([t.box for t in tracks])
            overlap = iou(boxes, last)
            shrunk = _areas(boxes)[:, None] * OVERSHADOW_AREA_RATIO <= _areas(last)[None, :]
            near = overlap >= s.track_iou
            overlap[shrunk] = 0.0
            taken: set[int] = set()
            for flat in np.argsort(-overlap, axis=None, kind="stable"):
                i, j = divmod(int(flat), len(tracks))
                if overlap[i, j] < s.track_iou:
                    break
                if ids[i] is None and j not in taken:
                    ids[i] = tracks[j].id
                    taken.add(j)
        found = {i for i in ids if i is not None}
        for i, box in enumerate(boxes):
            if ids[i] is None:
                ids[i] = self._next_id
                track = self._tracks[self._next_id] = _Track(self._next_id, box.copy(), now, now)
                log.debug("track %d started at %s", self._next_id, box.tolist())
                self._next_id += 1
                stepped_back = [t for j, t in enumerate(tracks)   # (no tracks: near/shrunk never read)
                                if near[i, j] and shrunk[i, j] and t.taken and t.id not in found]
                if stepped_back:
                    track.taken = list(stepped_back[0].taken)
            else:
                track = self._tracks[ids[i]]
                track.box = box.copy()
                track.last_seen = now
                track.missed = 0
        for track in tracks:
            if track.id not in found:
                track.missed += 1
                track.missed_since_face = True
                if track.missed >= MISSES_DROP_VOTES and track.votes:
                    log.debug("track %d not found %d times: its votes are dropped", track.id, track.missed)
                    track.votes.clear()
        return [int(i) for i in ids]

    def needs_embedding(self, track_id: int, now: float | None = None) -> bool:
        """True while the track is live and undecided (embedding is the costly step), and for a decided
        track when the check that it still follows the same face is due: CHECK_SECONDS after its last
        embedding, or at once when it is found after a detection missed it."""
        track = self._tracks.get(track_id)
        if track is None:
            return False
        if track.decision is None:
            return True
        if track.face is None:   # never given an embedding: nothing to check against
            return False
        now = self._clock() if now is None else now
        return self._unlike_fresh(track, now) or track.missed_since_face or now - track.face_at >= CHECK_SECONDS

    def decided(self, track_id: int) -> bool:
        track = self._tracks.get(track_id)
        return track is not None and track.decision is not None

    def unsettled(self, track_id: int, now: float | None = None) -> bool:
        """True while the track is live and undecided, or decided with its last frame unlike its face (for
        CHECK_SECONDS): the daemon then detects every frame, to see at once whether that was another face."""
        track = self._tracks.get(track_id)
        if track is None:
            return False
        return track.decision is None or self._unlike_fresh(track, self._clock() if now is None else now)

    @staticmethod
    def _unlike_fresh(track: _Track, now: float) -> bool:
        return track.unlike is not None and now - track.unlike[1] < CHECK_SECONDS

    def overshadow(self, track_id: int, now: float | None = None) -> None:
        """A larger face is in view (``now``: when it was last seen): this one is not at the door.  Its votes
        so far are dropped and it gets none for ``window_seconds`` after that, so that frames in which the
        face in front is not found (turned away, looking down) cannot add up to let the face behind it in."""
        now = self._clock() if now is None else now
        track = self._tracks.get(track_id)
        if track is not None:
            track.votes.clear()
            track.overshadowed_until = max(track.overshadowed_until, now + self.settings.window_seconds)

    def overshadowed(self, track_id: int, now: float | None = None) -> bool:
        now = self._clock() if now is None else now
        track = self._tracks.get(track_id)
        return track is not None and now < track.overshadowed_until

    # -- votes ----------------------------------------------------------------

    def vote(self, track_id: int, match: Match | None, now: float | None = None,
             refuse: str | None = None, embedding: np.ndarray | None = None) -> list[Event]:
        """Count one frame of a track; return the events it decides (often none).

        ``match`` is None for a face that failed the quality or liveness
        gate: it counts for nothing, not even towards ``unknown``.  ``refuse``:
        why a person recognized now may not be let in (face unlock turned off
        while this frame was matched): the track is decided DENIED with it.
        ``embedding``: the face's (unit) embedding the match was made from;
        without it the track is not checked for a change of face.
        """
        now = self._clock() if now is None else now
        track = self._tracks.get(track_id)
        if track is None:
            raise KeyError(f"no track {track_id}: observe() ended it or never started it")
        if match is None or now < track.overshadowed_until:
            return []
        events: list[Event] = []
        if embedding is not None:
            e = np.asarray(embedding, dtype=np.float32).reshape(-1)
            unlike, track.unlike = track.unlike, None
            similarity = 1.0 if track.face is None else float(track.face @ e)
            if similarity < SAME_FACE:
                # the next embedded frame says whose it was, however late (a low frame rate, faces the gate
                # turns away, missed detections): an unlike frame has no vote, so a late restart is safe
                if unlike is None or float(unlike[0] @ e) < SAME_FACE:
                    log.debug("track %d: a frame unlike its face (%.2f)", track.id, similarity)
                    track.unlike = (e, now)
                    track.face_at = now
                    return self._count(track, match, now, refuse, vote=False)
                track, events = self._another_face(track, similarity, now)
            track.face, track.face_at, track.missed_since_face = e, now, False
        return events + self._count(track, match, now, refuse)

    def _count(self, track: _Track, match: Match, now: float, refuse: str | None,
               vote: bool = True) -> list[Event]:
        """One matched frame of an undecided track: its vote (none for a frame unlike the track's face),
        and the decision it may bring."""
        if track.decision is not None:
            return []
        s, m = self.settings, self.match_settings
        track.embedded += 1
        if match.person is not None and (track.best is None or match.score > track.best.score):
            track.best = match

        voted = (match.person is not None and match.score >= m.threshold
                 and match.score - match.runner_up_score >= m.margin)
        if voted:
            if not track.conflicted and any(p != match.person for p in track.votes):
                log.warning("track %d voted for %s after %s: it will not unlock",
                            track.id, match.person, ", ".join(track.votes))
                track.conflicted = True
            if vote:
                track.votes.setdefault(match.person, collections.deque()).append((now, match.score))
                track.voted.add(match.person)
            voted = vote
        for recent in track.votes.values():
            while recent and now - recent[0][0] > s.window_seconds:
                recent.popleft()

        if voted and not track.conflicted and len(track.votes[match.person]) >= s.votes:
            score = max(sc for _, sc in track.votes[match.person])
            return self._accept(track, match.person, score, now, refuse)
        # An unlike frame may be the next person's first: it decides `unknown` only one frame later than a
        # frame of the face, so that a track of faces that never settle on one still decides.
        if track.embedded >= s.unknown_after + (0 if vote else 1):
            return self._unknown(track, now)
        return []

    def _another_face(self, track: _Track, similarity: float, now: float) -> tuple[_Track, list[Event]]:
        """The track's face is not the one it followed: it starts again, under the same id (the daemon's
        face-at-the-door memory stays with the box), remembering the decisions taken in its spot.  An
        undecided face before counts as an ended track, not attributed to anyone: it was not whoever the
        next face turns out to be."""
        log.info("track %d: another face (similarity %.2f to the one before): decided afresh",
                 track.id, similarity)
        self.face_changes += 1
        fresh = _Track(track.id, track.box, now, track.last_seen, overshadowed_until=track.overshadowed_until,
                       taken=list(track.taken))
        self._tracks[track.id] = fresh
        return fresh, self._count_partial(track, now, attribute=False)

    def _count_partial(self, track: _Track, now: float, attribute: bool = True) -> list[Event]:
        """A track that ended undecided counts towards the lockout by its embedded frames (module doc)."""
        if track.decision is not None or not track.embedded:
            return []
        weight = track.embedded / self.settings.unknown_after
        voted_for = next(iter(track.voted)) if attribute and len(track.voted) == 1 else None
        log.info("track %d ended undecided after %d embedded frame(s) (%d with a vote): %.2f of an "
                 "unknown towards the lockout", track.id, track.embedded,
                 sum(len(v) for v in track.votes.values()), weight)
        return self._count_unknown(now, weight, voted_for)

    def _accept(self, track: _Track, person: str, score: float, now: float,
                refuse: str | None = None) -> list[Event]:
        private = {"score": round(score, 4)}
        if refuse is not None:
            return self._decide(track, Event.now(DENIED, person, clock=self._wall, private=private, reason=refuse))
        if self.locked_out(now):
            return self._decide(track, Event.now(DENIED, person, clock=self._wall, private=private,
                                                 reason="lockout"))
        schedule = self._schedules(person)
        if (schedule is not None and not schedule.always and self.settings.schedules_need_time_sync
                and not self._time_synced()):
            # The clock may be the time saved at the last shutdown (a power cut, no clock battery):
            # a schedule read against it could let this person in at any hour.
            return self._decide(track, Event.now(DENIED, person, clock=self._wall, private=private,
                                                 reason="clock_not_synchronized"))
        if schedule is not None and not schedule.allows(self._local_time()):
            return self._decide(track, Event.now(DENIED, person, clock=self._wall, private=private,
                                                 reason="schedule"))
        self._lockout_level = 0
        # Their own broken tracks just before (one frame, then looking down for the keys) were them.
        self._unknowns = collections.deque(u for u in self._unknowns if u[2] != person)
        return self._decide(track, Event.now(RECOGNIZED, person, clock=self._wall, private=private))

    def _unknown(self, track: _Track, now: float) -> list[Event]:
        private: dict[str, Any] = {"conflicted": track.conflicted}
        if track.best is not None:
            private.update(score=round(track.best.score, 4), closest=track.best.person)
        events = self._decide(track, Event.now(UNKNOWN, clock=self._wall, private=private,
                                               frames=track.embedded))
        # counted even when not announced again: each new track of a face that keeps stepping back is
        # matched against the gallery again, a try like any other
        return events + self._count_unknown(now)

    def ended_events(self) -> list[Event]:
        """Events raised by tracks that ended in :meth:`observe` (a lockout), once each."""
        events, self._ended = self._ended, []
        return events

    def _recent_unknowns(self, now: float) -> float:
        return sum(w for t, w, _ in self._unknowns if now - t <= self.settings.lockout_window_seconds)

    def _count_unknown(self, now: float, weight: float = 1.0, person: str | None = None) -> list[Event]:
        """One more unknown attempt (or ``weight`` of one); the LOCKOUT event if it engages one."""
        s = self.settings
        events: list[Event] = []
        self._lockout_level = self._level(now)
        self._last_unknown = now
        self._unknowns.append((now, weight, person))
        while self._unknowns and now - self._unknowns[0][0] > s.lockout_window_seconds:
            self._unknowns.popleft()
        if self._recent_unknowns(now) >= s.lockout_after - 1e-9:
            seconds = min(s.lockout_seconds * 2 ** self._lockout_level, s.lockout_max_seconds)
            self._lockout_level = min(self._lockout_level + 1, 32)  # 2**32 * base is past any cap
            self._lockout_seconds = seconds
            self._lockout_until = now + seconds
            self._unknowns.clear()
            log.warning("%d unknown faces within %.0f s: face unlock suspended for %.0f s",
                        s.lockout_after, s.lockout_window_seconds, seconds)
            events.append(Event.now(LOCKOUT, clock=self._wall, seconds=seconds))
        return events

    def _repeats(self, track: _Track, kind: str, person: str | None) -> bool:
        """Was this decision taken in the track's spot already (module doc)?  For ``unknown``, only for a
        face like the one reported then."""
        return any(k == kind and p == person
                   and (kind != UNKNOWN or f is None or track.face is None or float(f @ track.face) >= SAME_FACE)
                   for k, p, f in track.taken)

    def _decide(self, track: _Track, event: Event) -> list[Event]:
        track.decision = event.kind
        repeated = self._repeats(track, event.kind, event.person)
        track.taken.append((event.kind, event.person, track.face))
        if repeated:
            log.info("track %d: %s %s again in the same spot: not announced again", track.id, event.kind,
                     event.person or "")
            return []
        log.info("track %d: %s %s %s", track.id, event.kind, event.person or "", dict(event.detail))
        return [event]

    # -- lockout and status ---------------------------------------------------

    def lockout_state(self) -> dict[str, Any]:
        """The lockout as wall-clock times, to save across a restart (JSON-able)."""
        now, wall = self._clock(), self._wall()
        locked = self.locked_out(now)
        return {"until": wall + self.lockout_remaining(now) if locked else None,
                "seconds": self._lockout_seconds if locked else 0.0, "level": self._level(now)}

    def restore_lockout(self, state: dict[str, Any]) -> None:
        """Resume a lockout saved by :meth:`lockout_state` (bad or stale entries are ignored).

        The time left is capped at the lockout's own length: a clock that went
        back (a Pi without a real-time clock, before NTP) cannot make it longer.
        """
        try:
            level = int(state.get("level", 0))
            until = state.get("until")
            left = 0.0 if until is None else float(until) - self._wall()
            length = float(state.get("seconds", self.settings.lockout_max_seconds))
        except (TypeError, ValueError, AttributeError, OverflowError):
            return
        now = self._clock()
        self._lockout_level = max(0, min(level, 32))
        if left > 0:
            left = min(left, length, self.settings.lockout_max_seconds)
            self._lockout_seconds = length
            self._lockout_until = now + left
            log.warning("face unlock stays suspended for %.0f s (a lockout from before the restart)", left)
        elif self._lockout_level:
            self._last_unknown = now  # the doubling resets after the usual quiet period

    def _level(self, now: float) -> int:
        """Lockouts counted towards the next one's length, after the quiet-period reset."""
        marks = [t for t in (self._last_unknown, self._lockout_until) if t is not None]
        if marks and now - max(marks) >= self.settings.lockout_max_seconds:
            return 0
        return self._lockout_level

    def locked_out(self, now: float | None = None) -> bool:
        """True while face unlock is suspended by a lockout."""
        return self.lockout_remaining(now) > 0

    def lockout_remaining(self, now: float | None = None) -> float:
        """Seconds of lockout left (0.0 when not locked out)."""
        now = self._clock() if now is None else now
        return max(0.0, self._lockout_until - now) if self._lockout_until is not None else 0.0

    def status(self, now: float | None = None) -> dict[str, Any]:
        """A JSON-able summary for ``lock status`` (no scores: they stay in the audit log)."""
        now = self._clock() if now is None else now
        return {
            "tracks": [{"id": t.id, "box": [round(float(v), 1) for v in t.box],
                        "age_seconds": round(now - t.first_seen, 2), "embedded": t.embedded,
                        "votes": {p: len(v) for p, v in t.votes.items()},
                        "conflicted": t.conflicted, "decision": t.decision}
                       for t in self._tracks.values()
                       if now - t.last_seen <= self.settings.track_timeout_seconds],
            "locked_out": self.locked_out(now),
            "lockout_remaining_seconds": round(self.lockout_remaining(now), 1),
            "lockout_level": self._level(now),
            "recent_unknowns": round(self._recent_unknowns(now), 2),
        }
