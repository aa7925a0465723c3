"""The unlock decision: tracks, votes, unknowns, lockout and schedules, on a fake clock."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pytest

from lock.config import DecideSettings, MatchSettings
from lock.decide import SAME_FACE, Decider, Match, iou
from lock.schedule import TIME_SYNC_FILE, Schedule, clock_synchronized

BOX = np.array([[100, 100, 200, 220]], dtype=np.float32)
FAR_BOX = np.array([[400, 100, 500, 220]], dtype=np.float32)
MATCH = MatchSettings(threshold=0.6, margin=0.05)
RESIDENT = Match("resident", 0.8, "visitor", 0.3)
VISITOR = Match("visitor", 0.8, "resident", 0.3)
STRANGER = Match("resident", 0.2, "visitor", 0.1)


def settings(**kw) -> DecideSettings:
    base = dict(votes=2, window_seconds=3.0, unknown_after=4, track_iou=0.3, track_timeout_seconds=1.5,
                lockout_after=3, lockout_window_seconds=120.0, lockout_seconds=60.0,
                lockout_max_seconds=600.0)
    base.update(kw)
    return DecideSettings(**base)


def make(schedules=lambda name: None, local_time=lambda: dt.datetime(2024, 5, 6, 12, 0),
         time_synced=lambda: True, **kw) -> Decider:
    # The default clock raises, so a test that forgets to pass `now` fails.
    return Decider(settings(**kw), MATCH, schedules=schedules, clock=lambda: pytest.fail("clock used"),
                   wall=lambda: 1_700_000_000.0, local_time=local_time, time_synced=time_synced)


def feed(d: Decider, matches, *, start=0.0, step=0.1, box=BOX):
    """One face per frame, one track; returns (track ids, all events)."""
    ids, events = [], []
    for k, m in enumerate(matches):
        now = start + k * step
        (tid,) = d.observe(box, now)
        ids.append(tid)
        if d.needs_embedding(tid):
            events += d.vote(tid, m, now)
    return ids, events


def kinds(events):
    return [e.kind for e in events]


def unknown_track(d: Decider, now: float, box=BOX) -> list:
    """A whole unknown track starting at `now` (and a fresh box so it is a new track)."""
    d.observe(np.empty((0, 4)), now + 100)  # let earlier tracks time out
    _, events = feed(d, [STRANGER] * 4, start=now + 100, box=box)
    return events


def lockout_lengths(d: Decider, starts) -> list[float]:
    out = []
    for t in starts:
        out += [e.detail["seconds"] for e in unknown_track(d, t) if e.kind == "lockout"]
    return out


# -- votes -----------------------------------------------------------------------

def test_two_agreeing_votes_unlock_once():
    d = make()
    ids, events = feed(d, [RESIDENT, RESIDENT, RESIDENT])
    assert kinds(events) == ["recognized"]
    assert events[0].person == "resident"
    assert events[0].private["score"] == pytest.approx(0.8)
    assert events[0].time == 1_700_000_000.0
    assert len(set(ids)) == 1


def test_one_vote_is_not_enough():
    _, events = feed(make(), [RESIDENT])
    assert events == []


def test_votes_outside_the_window_do_not_count():
    d = make(unknown_after=10, track_timeout_seconds=10.0)
    _, events = feed(d, [RESIDENT, RESIDENT], step=3.5)   # 3.5 s apart, window 3 s
    assert events == []
    _, events = feed(d, [RESIDENT], start=6.0)         # 2.5 s after the last one
    assert kinds(events) == ["recognized"]


def test_close_runner_up_gives_no_vote():
    _, events = feed(make(), [Match("resident", 0.8, "visitor", 0.78)] * 3)
    assert "recognized" not in kinds(events)


def test_below_threshold_gives_no_vote():
    _, events = feed(make(), [Match("resident", 0.59, None, -1.0)] * 3)
    assert "recognized" not in kinds(events)


def test_score_exactly_at_threshold_votes():
    _, events = feed(make(), [Match("resident", 0.6, None, -1.0)] * 2)
    assert kinds(events) == ["recognized"]


def test_conflicting_votes_never_unlock_and_end_unknown():
    _, events = feed(make(), [RESIDENT, VISITOR, RESIDENT, RESIDENT])
    assert kinds(events) == ["unknown"]
    assert events[0].private["conflicted"] is True


def test_unknown_raised_exactly_once_per_track():
    d = make()
    ids, events = feed(d, [STRANGER] * 10)
    assert kinds(events) == ["unknown"]
    assert "score" not in events[0].detail  # scores stay private
    assert events[0].detail["frames"] == 4
    assert d.vote(ids[-1], STRANGER, 1.5) == []


def test_faces_failing_the_quality_gate_count_for_nothing():
    _, events = feed(make(), [None] * 10)
    assert events == []


def test_empty_gallery_counts_towards_unknown():
    _, events = feed(make(), [Match(None, 0.0)] * 4)
    assert kinds(events) == ["unknown"]


def test_needs_embedding_goes_false_after_a_decision():
    d = make()
    (tid,) = d.observe(BOX, 0.0)
    assert d.needs_embedding(tid)
    d.vote(tid, RESIDENT, 0.0)
    assert d.needs_embedding(tid)
    assert kinds(d.vote(tid, RESIDENT, 0.1)) == ["recognized"]
    assert not d.needs_embedding(tid)
    assert d.vote(tid, RESIDENT, 0.2) == []


# -- tracks ----------------------------------------------------------------------

def test_tracks_follow_overlapping_boxes_and_split_distant_ones():
    d = make()
    (a,) = d.observe(BOX, 0.0)
    moved = BOX + np.array([10, 5, 10, 5], dtype=np.float32)
    b, c = d.observe(np.concatenate([FAR_BOX, moved]), 0.1)
    assert c == a and b != a


def test_greedy_assignment_prefers_the_best_overlap():
    d = make()
    a, b = d.observe(np.array([[0, 0, 100, 100], [60, 0, 160, 100]], dtype=np.float32), 0.0)
    # One box now sits mostly on track b: it must join b, not a, even though it also overlaps a.
    (c,) = d.observe(np.array([[50, 0, 150, 100]], dtype=np.float32), 0.1)
    assert c == b


def test_tracks_end_after_the_timeout():
    d = make(track_timeout_seconds=1.5)
    (a,) = d.observe(BOX, 0.0)
    assert d.observe(BOX, 1.4) == [a]
    assert d.observe(BOX, 3.0) != [a]
    assert not d.needs_embedding(a)


def test_no_boxes_gives_no_ids():
    assert make().observe(np.empty((0, 4), dtype=np.float32), 0.0) == []


def test_iou():
    a = np.array([[0, 0, 10, 10]])
    assert iou(a, np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])) == pytest.approx(
        np.array([[1.0, 1 / 3, 0.0]]))


# -- lockout ---------------------------------------------------------------------

def test_lockout_engages_after_k_unknown_tracks():
    d = make(lockout_after=3)
    for k in range(2):
        assert "lockout" not in kinds(unknown_track(d, k * 10.0))
    assert not d.locked_out(120.0)
    events = unknown_track(d, 20.0)   # third unknown, at about t = 120.3
    assert kinds(events) == ["unknown", "lockout"]
    assert events[1].detail["seconds"] == 60.0
    assert d.locked_out(130.0) and d.lockout_remaining(130.0) == pytest.approx(50.3)
    assert not d.locked_out(181.0)


def test_each_lockout_needs_k_fresh_unknowns():
    d = make(lockout_after=2)
    assert lockout_lengths(d, [0, 10]) == [60.0]
    assert lockout_lengths(d, [20]) == []            # the two before it were used up
    assert lockout_lengths(d, [30]) == [120.0]


def test_unknowns_outside_the_lockout_window_do_not_count():
    d = make(lockout_after=2, lockout_window_seconds=120.0)
    unknown_track(d, 0.0)
    assert "lockout" not in kinds(unknown_track(d, 200.0))
    assert "lockout" in kinds(unknown_track(d, 250.0))


def test_denied_while_locked_out():
    d = make(lockout_after=1)
    assert "lockout" in kinds(unknown_track(d, 0.0))
    d.observe(np.empty((0, 4)), 110.0)
    _, events = feed(d, [RESIDENT, RESIDENT], start=110.0)
    assert kinds(events) == ["denied"]
    assert events[0].detail["reason"] == "lockout" and events[0].person == "resident"
    _, events = feed(d, [RESIDENT, RESIDENT], start=200.0, box=FAR_BOX)  # lockout over
    assert kinds(events) == ["recognized"]


def test_lockout_doubles_and_caps():
    d = make(lockout_after=1, lockout_seconds=60.0, lockout_max_seconds=200.0)
    assert lockout_lengths(d, [0, 100, 200, 300, 400]) == [60.0, 120.0, 200.0, 200.0, 200.0]


def test_lockout_doubling_resets_after_a_successful_unlock():
    d = make(lockout_after=1, lockout_seconds=60.0, lockout_max_seconds=1000.0)
    assert lockout_lengths(d, [0, 100]) == [60.0, 120.0]
    _, events = feed(d, [RESIDENT, RESIDENT], start=400.0, box=FAR_BOX)
    assert kinds(events) == ["recognized"]
    assert lockout_lengths(d, [400]) == [60.0]


def test_lockout_doubling_resets_after_a_quiet_period():
    d = make(lockout_after=1, lockout_seconds=60.0, lockout_max_seconds=500.0)
    assert lockout_lengths(d, [0, 100]) == [60.0, 120.0]   # second ends about t = 320
    assert d.status(400.0)["lockout_level"] == 2
    assert lockout_lengths(d, [300]) == [240.0]            # 80 s after: still doubling
    assert lockout_lengths(d, [1300]) == [60.0]            # quiet for over 500 s: back to base
    assert d.status(1500.0)["lockout_level"] == 1


def test_status_reports_tracks_and_lockout():
    d = make(lockout_after=1)
    unknown_track(d, 0.0)
    (tid,) = d.observe(FAR_BOX, 101.0)
    d.vote(tid, RESIDENT, 101.0)
    st = d.status(101.0)
    assert st["locked_out"] is True and st["lockout_remaining_seconds"] == pytest.approx(59.3)
    by_id = {t["id"]: t for t in st["tracks"]}
    assert by_id[tid]["votes"] == {"resident": 1} and by_id[tid]["decision"] is None
    assert "score" not in str(st)


# -- schedules -------------------------------------------------------------------

WEEKDAYS = Schedule.parse("mon-fri", "07:00-19:00")
NIGHTS = Schedule.parse("fri", "22:00-06:00")
MONDAY_NOON = dt.datetime(2024, 5, 6, 12, 0)   # 2024-05-06 is a Monday


@pytest.mark.parametrize("schedule, when, expected", [
    (None, dt.datetime(2024, 5, 5, 3, 0), "recognized"),
    (WEEKDAYS, MONDAY_NOON, "recognized"),
    (WEEKDAYS, dt.datetime(2024, 5, 6, 19, 30), "denied"),
    (WEEKDAYS, dt.datetime(2024, 5, 5, 12, 0), "denied"),       # Sunday
    (NIGHTS, dt.datetime(2024, 5, 10, 23, 0), "recognized"),    # Friday night
    (NIGHTS, dt.datetime(2024, 5, 11, 5, 0), "recognized"),     # Saturday early, still Friday's range
    (NIGHTS, dt.datetime(2024, 5, 11, 23, 0), "denied"),        # Saturday night
    (NIGHTS, dt.datetime(2024, 5, 10, 5, 0), "denied"),         # Friday early belongs to Thursday
])
def test_schedules(schedule, when, expected):
    d = make(schedules=lambda name: schedule if name == "resident" else None, local_time=lambda: when)
    _, events = feed(d, [RESIDENT, RESIDENT])
    assert kinds(events) == [expected]
    if expected == "denied":
        assert events[0].detail["reason"] == "schedule"
    _, events = feed(d, [VISITOR, VISITOR], start=10.0, box=FAR_BOX)  # visitor has no schedule
    assert kinds(events) == ["recognized"]


def test_a_schedule_is_not_read_against_a_clock_no_time_server_has_set(tmp_path):
    """After a power cut a Pi without a clock battery runs on the time saved at shutdown: a schedule read
    against it could let its person in at any hour.  Until the clock has been set from a time server
    (systemd-timesyncd's file, here a real one in tmp_path), a person with a schedule is refused, inside
    their hours too; a person without one is not affected."""
    synced = tmp_path / "synchronized"
    d = make(schedules=lambda name: WEEKDAYS if name == "resident" else None, local_time=lambda: MONDAY_NOON,
             time_synced=lambda: clock_synchronized(synced))
    _, events = feed(d, [RESIDENT, RESIDENT])
    assert kinds(events) == ["denied"] and events[0].detail["reason"] == "clock_not_synchronized"
    _, events = feed(d, [VISITOR, VISITOR], start=10.0, box=FAR_BOX)
    assert kinds(events) == ["recognized"]
    synced.touch()                 # the time server answered
    _, events = feed(d, [RESIDENT, RESIDENT], start=20.0, box=FAR_BOX)
    assert kinds(events) == ["recognized"]
    synced.unlink()                # outside their hours the schedule still decides (reason "schedule")
    d = make(schedules=lambda name: WEEKDAYS, local_time=lambda: dt.datetime(2024, 5, 5, 12, 0),
             time_synced=lambda: clock_synchronized(synced), schedules_need_time_sync=False)
    _, events = feed(d, [RESIDENT, RESIDENT])
    assert kinds(events) == ["denied"] and events[0].detail["reason"] == "schedule"


def test_the_owner_may_trust_the_clock_as_it_is():
    """decide.schedules_need_time_sync: false (a clock battery and no network): the schedule alone decides."""
    d = make(schedules=lambda name: WEEKDAYS, local_time=lambda: MONDAY_NOON, time_synced=lambda: False,
             schedules_need_time_sync=False)
    _, events = feed(d, [RESIDENT, RESIDENT])
    assert kinds(events) == ["recognized"]


def test_the_decider_reads_timesyncd_by_default():
    """Made without time_synced (as the daemon makes it), the Decider asks the real clock_synchronized()."""
    d = Decider(settings(), MATCH, schedules=lambda name: WEEKDAYS, clock=lambda: pytest.fail("clock used"),
                wall=lambda: 1_700_000_000.0, local_time=lambda: MONDAY_NOON)
    _, events = feed(d, [RESIDENT, RESIDENT])
    expected = ["recognized"] if os.path.exists(TIME_SYNC_FILE) else ["denied"]
    assert kinds(events) == expected


def test_denied_track_is_decided_and_does_not_count_as_unknown():
    d = make(lockout_after=1, schedules=lambda name: WEEKDAYS,
             local_time=lambda: dt.datetime(2024, 5, 5, 12, 0))
    ids, events = feed(d, [RESIDENT] * 8)
    assert kinds(events) == ["denied"]
    assert not d.needs_embedding(ids[-1]) and not d.locked_out(1.0)


# -- lockout: strangers who walk away, reloads, restarts -------------------------

def stranger_walks_away(d: Decider, start: float, frames: int) -> list:
    """A stranger's track with ``frames`` unmatched frames (< unknown_after), then gone: its events."""
    d.observe(np.empty((0, 4)), start - 50)  # earlier tracks end
    _, events = feed(d, [STRANGER] * frames, start=start)
    d.observe(np.empty((0, 4)), start + 10)  # this one ends (timeout 1.5 s)
    return events + d.ended_events()


def test_a_stranger_who_walks_away_before_unknown_still_counts_towards_the_lockout():
    """Unmatched frames count however they are split: 4 tracks of 3 frames weigh 3 unknowns of 4 frames."""
    d = make(lockout_after=3, unknown_after=4)
    for k in range(3):
        assert stranger_walks_away(d, 100.0 + 20 * k, 3) == []          # no unknown, no lockout yet
    assert d.status(170.0)["recent_unknowns"] == 2.25
    events = stranger_walks_away(d, 160.0, 3)
    assert kinds(events) == ["lockout"] and d.locked_out(171.0)
    assert d.ended_events() == []                                        # raised once


def test_residents_passing_by_unmatched_do_not_lock_the_door():
    """One unmatched frame each (looked up, poor light) weighs a quarter of an unknown by default."""
    d = make(lockout_after=5, unknown_after=4)
    for k in range(12):                                                  # 12 passers-by within 2 minutes
        assert stranger_walks_away(d, 100.0 + 9 * k, 1) == []
    assert not d.locked_out(210.0) and d.status(210.0)["recent_unknowns"] == 3.0


def test_a_track_never_embedded_does_not_count_one_that_won_a_vote_does():
    d = make(lockout_after=1, unknown_after=4)
    assert stranger_walks_away(d, 100.0, 0) == []                         # seen, never embedded
    assert d.status(150.0)["recent_unknowns"] == 0
    # a lookalike who wins one vote and steps away before the second weighs its frames, as any other
    for k in range(2):
        d.observe(np.empty((0, 4)), 150.0 + 20 * k)
        feed(d, [RESIDENT, STRANGER], start=160.0 + 20 * k)
        d.observe(np.empty((0, 4)), 170.0 + 20 * k)
        if k == 0:
            assert d.ended_events() == [] and not d.locked_out(170.0)
            assert d.status(170.0)["recent_unknowns"] == 0.5
    assert kinds(d.ended_events()) == ["lockout"] and d.locked_out(190.0)


def test_a_residents_own_broken_tracks_are_forgiven_when_they_are_let_in():
    d = make(lockout_after=5, unknown_after=4)
    d.observe(np.empty((0, 4)), 10.0)
    feed(d, [RESIDENT, STRANGER], start=20.0)          # one winning frame, then looks down for the keys
    d.observe(np.empty((0, 4)), 30.0)
    stranger_walks_away(d, 60.0, 2)                     # someone else, meanwhile
    assert d.status(71.0)["recent_unknowns"] == 1.0
    d.observe(np.empty((0, 4)), 80.0)
    _, events = feed(d, [RESIDENT, RESIDENT], start=90.0)
    assert kinds(events) == ["recognized"]
    assert d.status(91.0)["recent_unknowns"] == 0.5    # the resident's 0.5 is gone, the stranger's stays


def test_a_lookalike_retrying_one_vote_at_a_time_is_locked_out():
    """Defaults: attempts of 3 frames that each win one vote, then step away, engage the lockout."""
    d = make()
    events = []
    for k in range(20):
        d.observe(np.empty((0, 4)), 1000.0 + 10 * k)
        _, ev = feed(d, [RESIDENT, STRANGER, STRANGER], start=1002.0 + 10 * k)
        events += ev
        d.observe(np.empty((0, 4)), 1008.0 + 10 * k)
        events += d.ended_events()
    assert "recognized" not in kinds(events)
    assert "lockout" in kinds(events)


def test_reconfigure_keeps_the_lockout_and_the_tracks():
    d = make(lockout_after=1)
    assert "lockout" in kinds(unknown_track(d, 0.0))
    (tid,) = d.observe(FAR_BOX, 101.0)
    d.vote(tid, RESIDENT, 101.0)
    d.reconfigure(settings(lockout_after=5, votes=2), MATCH)
    assert d.locked_out(102.0) and d.lockout_remaining(102.0) == pytest.approx(58.3)
    assert d.status(102.0)["tracks"][-1]["votes"] == {"resident": 1}


def test_a_lockout_survives_a_restart_capped_by_lockout_max_seconds():
    clock = {"now": 0.0, "wall": 1_700_000_000.0}
    def new():
        return Decider(settings(lockout_after=1, lockout_seconds=60.0, lockout_max_seconds=600.0), MATCH,
                       clock=lambda: clock["now"], wall=lambda: clock["wall"])
    d = new()
    unknown_track(d, 0.0)   # the lockout starts at about t = 100.3 (unknown_track starts at +100)
    clock["now"], clock["wall"] = 110.0, 1_700_000_110.0
    saved = d.lockout_state()
    assert saved["level"] == 1 and saved["until"] == pytest.approx(1_700_000_160.3)   # 50.3 s left
    assert saved["seconds"] == 60.0
    clock["now"], clock["wall"] = 5.0, 1_700_000_120.0                    # restarted 10 s later
    d2 = new()
    d2.restore_lockout(saved)
    assert d2.locked_out() and d2.lockout_remaining() == pytest.approx(40.3)
    assert lockout_lengths(d2, [200.0]) == [120.0]                          # the doubling carries on too
    clock["wall"] = 1_600_000_000.0                                         # a clock that went back
    d3 = new()
    d3.restore_lockout(saved)
    assert d3.lockout_remaining() == 60.0                                   # never longer than it was
    for junk in ({}, {"until": "x"}, {"until": None, "level": 0}, [], {"level": 1e999}):
        d4 = new()
        d4.restore_lockout(junk)
        assert not d4.locked_out()


def test_schedule_end_of_day_and_empty_ranges():
    whole = Schedule.parse("mon-sun", "00:00-24:00")
    assert whole.allows(dt.datetime(2024, 5, 6, 23, 59, 30)) and whole.allows(dt.datetime(2024, 5, 6, 0, 0))
    assert str(whole) == "mon,tue,wed,thu,fri,sat,sun 00:00-24:00"
    assert Schedule.from_json(whole.to_json()) == whole
    late = Schedule.parse("fri", "22:00-24:00")
    assert late.allows(dt.datetime(2024, 5, 10, 23, 59, 59)) and not late.allows(dt.datetime(2024, 5, 11, 0, 0))
    assert Schedule().allows(dt.datetime(2024, 5, 6, 23, 59, 59))      # the default: any time
    with pytest.raises(ValueError, match="never let anyone in.*00:00-24:00"):
        Schedule.parse("mon-fri", "10:00-10:00")
    stored = Schedule.from_json('{"days": ["mon"], "start": "10:00:00", "end": "10:00:00"}')  # older version
    assert not stored.allows(dt.datetime(2024, 5, 6, 10, 0))


def test_schedule_hours_with_a_time_zone_are_refused():
    """The door compares hours with the local time of day: a zone made the daemon's loop die (TypeError)."""
    for hours in ("00:00Z-23:59Z", "07:00+01:00-19:00", "07:00-19:00+00:00"):
        with pytest.raises(ValueError, match="time zone"):
            Schedule.parse("mon-sun", hours)
    # one stored by the version that took them: lets no one in, and is not an error (an error would stop
    # every lookup in the gallery, so no one at all would get in)
    stored = Schedule.from_json('{"days": ["mon"], "start": "00:00:00+00:00", "end": "23:59:00+00:00"}')
    assert not any(stored.allows(dt.datetime(2024, 5, 6, h, 30)) for h in range(24))


def test_a_residents_broken_track_is_still_theirs_after_a_face_in_front_cleared_its_votes():
    """overshadow() clears the votes; the track ended as nobody's and was never forgiven (found by review)."""
    d = make(lockout_after=5, unknown_after=4)
    d.observe(np.empty((0, 4)), 10.0)
    ids, _ = feed(d, [RESIDENT, STRANGER], start=20.0)   # one winning frame, then looks down
    tid = ids[-1]
    d.overshadow(tid, 20.2)                              # someone crosses in front
    assert d.overshadowed(tid, 20.3) and d.vote(tid, RESIDENT, 20.3) == []
    d.observe(np.empty((0, 4)), 30.0)                   # the track ends undecided: 2 frames, 0.5 unknown
    assert d.status(31.0)["recent_unknowns"] == 0.5
    d.observe(np.empty((0, 4)), 80.0)
    _, events = feed(d, [RESIDENT, RESIDENT], start=90.0)
    assert kinds(events) == ["recognized"] and d.status(91.0)["recent_unknowns"] == 0.0


# -- a track is one face (adversarial review) -------------------------------------------------------

def test_a_box_that_shrank_to_a_face_behind_starts_its_own_track():
    """The stranger at the door ducks; a resident's face behind them, where theirs was, must not continue
    (and vote on) the stranger's track.  A face walking up grows as fast and keeps its track."""
    d = make()
    front = np.array([[241, 143, 400, 342]], np.float32)    # 159x199 px
    behind = np.array([[265, 147, 369, 289]], np.float32)   # 104x142: IoU 0.47, area / 2.1
    assert iou(front, behind)[0, 0] > 0.3
    (a,) = d.observe(front, 0.0)
    (b,) = d.observe(behind, 0.1)
    assert b != a
    d = make()
    (a,) = d.observe(behind, 0.0)
    (b,) = d.observe(front, 0.1)            # growing: the same face nearer
    assert b == a


def test_a_track_two_detections_did_not_find_loses_its_votes():
    """A resident looks up once (one vote) and goes in; a stranger steps into the same spot before the track
    times out.  Before, the stranger's track kept the resident's vote, and one lookalike frame opened.  A
    single miss (a face turned for a frame) keeps the votes: a resident does not start again."""
    lookalike = Match("resident", 0.75, "visitor", 0.3)
    d = make()
    ids, events = feed(d, [RESIDENT])
    assert events == []
    d.observe(np.empty((0, 4)), 0.2)                        # nobody found, twice: the resident has gone in
    d.observe(np.empty((0, 4)), 0.3)
    ids2, events = feed(d, [lookalike], start=0.5)
    assert ids2 == ids and events == []                     # the same track (within 1.5 s), no door
    _, events = feed(d, [lookalike], start=0.6)
    assert kinds(events) == ["recognized"]                  # two votes of its own: as any track
    d = make()
    feed(d, [RESIDENT])
    d.observe(np.empty((0, 4)), 0.1)                        # missed once (turned away for a frame)
    _, events = feed(d, [RESIDENT], start=0.2)
    assert kinds(events) == ["recognized"]
    d = make()
    feed(d, [RESIDENT])
    d.observe(np.empty((0, 4)), 0.1)                        # missed, found, missed: never twice in a row
    feed(d, [None], start=0.2)
    d.observe(np.empty((0, 4)), 0.3)
    _, events = feed(d, [RESIDENT], start=0.4)
    assert kinds(events) == ["recognized"]


def test_someone_decided_who_steps_back_is_not_announced_again_and_someone_else_is():
    """Detection runs every 0.5 s for a decided face: stepping back more than 1.5x in area between two of
    them split the track, and the resident was let in (the stranger reported, counting twice towards a
    lockout) a second time.  The split-off track is still decided afresh: another person arriving right
    after, smaller, where the last one stood, must be let in (or reported) as anyone (re-check)."""
    near = np.array([[100, 100, 300, 300]], np.float32)
    far = np.array([[130, 130, 270, 270]], np.float32)     # area / 2.04, IoU 0.49
    d = make(lockout_after=2)
    ids, events = feed(d, [RESIDENT, RESIDENT], box=near)
    assert kinds(events) == ["recognized"]
    _, events = feed(d, [RESIDENT, RESIDENT], start=0.5, box=far)
    assert events == [] and not d.needs_embedding(d.observe(far, 0.7)[0])   # the same person: decided, silently
    d = make(lockout_after=2)
    _, events = feed(d, [STRANGER] * 4, box=near)
    assert kinds(events) == ["unknown"]
    _, events = feed(d, [STRANGER] * 4, start=0.5, box=far)
    # not announced again, but counted: each new track was matched against the gallery again (re-check 3:
    # a stranger stepping back again and again got uncounted tries)
    assert kinds(events) == ["lockout"] and d.locked_out(1.0)
    d = make()
    feed(d, [RESIDENT, RESIDENT], box=near)
    _, events = feed(d, [VISITOR, VISITOR], start=0.5, box=far)
    assert [(e.kind, e.person) for e in events] == [("recognized", "visitor")]
    d = make()
    feed(d, [STRANGER] * 4, box=near)
    _, events = feed(d, [RESIDENT, RESIDENT], start=0.5, box=far)
    assert [(e.kind, e.person) for e in events] == [("recognized", "resident")]


def test_face_unlock_turned_off_while_the_frame_was_matched_decides_the_track_denied():
    d = make()
    feed(d, [RESIDENT])
    (tid,) = d.observe(BOX, 0.1)
    events = d.vote(tid, RESIDENT, 0.1, refuse="face_unlock_off")
    assert kinds(events) == ["denied"] and events[0].detail == {"reason": "face_unlock_off"}
    assert not d.needs_embedding(tid)


def test_a_reload_that_raises_the_threshold_drops_the_votes_cast_under_the_old_one():
    d = make()
    _, events = feed(d, [Match("resident", 0.65, "visitor", 0.3)])      # a vote at 0.6
    assert events == []
    d.reconfigure(settings(), MatchSettings(threshold=0.8, margin=0.05))
    _, events = feed(d, [Match("resident", 0.81, "visitor", 0.3)], start=0.1)
    assert events == []                                                 # one vote under 0.8, not two
    _, events = feed(d, [Match("resident", 0.81, "visitor", 0.3)], start=0.2)
    assert kinds(events) == ["recognized"]
    d = make()                                                          # an unrelated change keeps them
    feed(d, [RESIDENT])
    d.reconfigure(settings(lockout_seconds=30.0), MATCH)
    _, events = feed(d, [RESIDENT], start=0.1)
    assert kinds(events) == ["recognized"]



def _face(k: int) -> np.ndarray:
    """A unit embedding; two different k are two different faces (orthogonal: similarity 0)."""
    e = np.zeros(128, np.float32)
    e[k] = 1.0
    return e


def _near(k: int, similarity: float) -> np.ndarray:
    """A unit embedding scoring ``similarity`` against _face(k): the same face in another frame."""
    e = _face(k) * similarity
    e[(k + 1) % 128] = np.sqrt(1.0 - similarity ** 2)
    return e


def feed_faces(d: Decider, frames, *, start=0.0, step=0.1, box=BOX):
    """Like feed(), with (match, embedding) per frame, asking needs_embedding() at each frame's time."""
    events, embedded = [], []
    for k, (m, e) in enumerate(frames):
        now = start + k * step
        (tid,) = d.observe(box, now)
        if d.needs_embedding(tid, now):
            embedded.append(round(now, 2))
            events += d.vote(tid, m, now, embedding=e)
    return events, embedded


def test_someone_stepping_into_the_spot_of_a_decided_face_is_decided_afresh():
    """A decided track needed no more embeddings until it ended: whoever stepped into its spot before
    1.5 s without a detection found empty continued it, unchecked.  A resident right after a reported
    stranger was never let in while standing there; a stranger right after a resident was neither
    reported nor counted towards a lockout."""
    d = make()
    events, _ = feed_faces(d, [(STRANGER, _face(0))] * 4)
    assert kinds(events) == ["unknown"]
    events, embedded = feed_faces(d, [(RESIDENT, _face(1))] * 8, start=0.4)
    assert [(e.kind, e.person) for e in events] == [("recognized", "resident")]
    assert embedded[:3] == [0.8, 0.9, 1.0]  # checked 0.5 s after the last embedding; confirmed; the second vote
    assert d.face_changes == 1
    d = make(lockout_after=2)
    feed_faces(d, [(RESIDENT, _face(1))] * 2)
    events, _ = feed_faces(d, [(STRANGER, _face(0))] * 12, start=0.2)
    assert kinds(events) == ["unknown"]            # reported, and counted
    events, _ = feed_faces(d, [(STRANGER, _face(2))] * 12, start=1.4)
    assert kinds(events) == ["unknown", "lockout"]  # a second stranger, another face: reported too (review)


def test_a_decided_face_is_checked_twice_a_second_and_after_a_missed_detection():
    d = make()
    events, embedded = feed_faces(d, [(RESIDENT, _near(1, 0.9))] * 2 + [(RESIDENT, _face(1))] * 10)
    assert kinds(events) == ["recognized"] and embedded == [0.0, 0.1, 0.6, 1.1]
    (tid,) = d.observe(BOX, 1.15)
    assert not d.needs_embedding(tid, 1.15)
    d.observe(np.empty((0, 4)), 1.2)                                       # missed once
    assert d.observe(BOX, 1.3) == [tid] and d.needs_embedding(tid, 1.3)    # found again: at once
    # the same face, in a poor frame (as low as SAME_FACE): alike, not a frame of another face
    d.vote(tid, RESIDENT, 1.3, embedding=_near(1, SAME_FACE))
    assert not d.unsettled(tid, 1.3) and not d.needs_embedding(tid, 1.4) and d.face_changes == 0
    d = make()
    feed(d, [RESIDENT, RESIDENT])               # without embeddings there is nothing to check against
    assert not d.needs_embedding(d.observe(BOX, 1.0)[0], 1.0)


def test_one_poor_frame_neither_restarts_a_track_nor_costs_a_vote():
    """A single frame unlike the face so far (a hand over it, blur) restarted the track twice, there and
    back: a resident let in was let in again, an undecided one lost their vote and had a quarter of an
    unknown counted against the household (review)."""
    d = make()
    events, _ = feed_faces(d, [(RESIDENT, _face(1)), (STRANGER, _face(3)), (RESIDENT, _face(1))])
    assert kinds(events) == ["recognized"]              # the poor frame: theirs, without a vote
    assert d.status(0.3)["recent_unknowns"] == 0 and d.face_changes == 0
    d = make()
    feed_faces(d, [(RESIDENT, _face(1))] * 2)
    (tid,) = d.observe(BOX, 0.6)
    assert d.needs_embedding(tid, 0.6) and not d.unsettled(tid, 0.6)
    d.vote(tid, STRANGER, 0.6, embedding=_face(3))
    assert d.unsettled(tid, 0.7) and d.needs_embedding(tid, 0.7)   # looked at again at the next frame
    events, _ = feed_faces(d, [(RESIDENT, _face(1))] * 4, start=0.7)
    assert events == [] and d.face_changes == 0 and not d.unsettled(tid, 1.0)


def test_the_same_person_in_the_same_spot_is_not_let_in_twice():
    """However often the face in a spot changes while its track lives (a resident who turned to the
    door, then back), the person let in there is not let in again; nor is a face reported `unknown`
    announced again when it comes back."""
    d = make()
    events, _ = feed_faces(d, [(RESIDENT, _face(1))] * 2)
    assert kinds(events) == ["recognized"]
    events, _ = feed_faces(d, [(STRANGER, _face(3)), (STRANGER, _near(3, 0.9))] * 3, start=0.6)
    assert kinds(events) == ["unknown"]              # another face for six frames: decided afresh
    events, _ = feed_faces(d, [(RESIDENT, _face(1))] * 6, start=1.2)
    events += feed_faces(d, [(STRANGER, _face(3))] * 10, start=1.8)[0]
    assert events == [] and d.face_changes == 3      # the resident again, then that face again: silent
    assert d.status(2.7)["recent_unknowns"] == 2     # each `unknown` decision counted


def test_faces_alternating_in_one_spot_do_not_hide_the_first():
    """Two faces taking turns frame by frame restarted the track every frame: none reached `unknown`
    (review).  (Two enrolled people taking turns: tests/test_daemon.py, a conflicted track.)"""
    d = make()
    events, _ = feed_faces(d, [(STRANGER, _face(0)), (STRANGER, _face(2))] * 4)
    assert kinds(events) == ["unknown"] and d.face_changes == 0


def test_another_face_in_an_undecided_track_does_not_inherit_its_vote():
    """A resident's one vote, then a stranger in the same spot at the next detection: their two frames
    made the two votes.  (A lookalike whose face scores SAME_FACE or more against the resident's is not
    told apart by this check: it is the same face to it.)"""
    d = make()
    events, _ = feed_faces(d, [(RESIDENT, _face(1)), (RESIDENT, _face(5)), (RESIDENT, _face(5))])
    assert events == [] and d.face_changes == 1         # unlike the face: no vote; confirmed: a track of its own
    events, _ = feed_faces(d, [(RESIDENT, _face(5))], start=0.3)
    assert kinds(events) == ["recognized"]              # two votes of its own
    assert d.status(0.3)["recent_unknowns"] == 0.5      # the two frames before, an ended track's, not forgiven


def test_a_frame_unlike_the_face_that_matches_someone_else_makes_the_track_conflicted():
    """Two enrolled people taking turns in one spot: the frames of the second are unlike the face and
    give no vote, but they still make the track conflicted, as before the face check: it never unlocks."""
    d = make()
    frames = [(RESIDENT, _face(1)), (VISITOR, _face(5))] * 4
    events, _ = feed_faces(d, frames)
    assert kinds(events) == ["unknown"] and d.status(0.7)["tracks"][0]["conflicted"]


def test_the_next_embedded_frame_confirms_another_face_however_late_it_comes():
    """Confirmation had to come within 0.5 s and without a missed detection between: at a low frame rate,
    or with a new face the gate or the detector missed every other time, it never came, and the face
    stepping into a decided spot was never decided (review 3)."""
    d = make(track_timeout_seconds=5.0)
    feed_faces(d, [(STRANGER, _face(1))] * 4, step=1.0)               # 1 fps: reported unknown
    (tid,) = d.observe(BOX, 4.0)
    d.vote(tid, RESIDENT, 4.0, embedding=_face(5))
    d.observe(np.empty((0, 4)), 5.0)                                   # missed twice
    d.observe(np.empty((0, 4)), 6.0)
    assert d.observe(BOX, 7.0) == [tid] and d.needs_embedding(tid, 7.0)
    d.vote(tid, None, 7.0)                                             # turned away by the quality gate
    events = d.vote(tid, RESIDENT, 8.0, embedding=_face(5))
    assert d.face_changes == 1 and events == []                        # confirmed; its first vote
    assert kinds(d.vote(tid, RESIDENT, 9.0, embedding=_face(5))) == ["recognized"]


def test_two_unlike_frames_are_another_face_only_if_alike_each_other():
    d = make()
    feed_faces(d, [(STRANGER, _face(1)), (STRANGER, _face(5)), (STRANGER, _face(7)), (STRANGER, _face(1))])
    assert d.face_changes == 0                                         # two poor frames, each its own


def test_a_frame_unlike_the_face_decides_nothing_by_itself():
    """An unlike frame as the track's fourth matched one decided `unknown` at once, although the next
    was the resident's second vote: reported with their own photo, counted, then let in (review 3).
    Nor may it vote, whoever it matches."""
    d = make()
    events, _ = feed_faces(d, [(STRANGER, _face(1)), (STRANGER, _face(1)), (RESIDENT, _face(1)),
                               (VISITOR, _face(5)), (RESIDENT, _face(1))])
    assert kinds(events) == ["unknown"]             # the visitor's frame made it conflicted: never let in
    d = make()
    events, _ = feed_faces(d, [(STRANGER, _face(1)), (STRANGER, _face(1)), (RESIDENT, _face(1)),
                               (STRANGER, _face(5)), (RESIDENT, _face(1))])
    assert kinds(events) == ["recognized"]          # not `unknown` at the fourth: the resident's own poor frame
    for first in (RESIDENT, STRANGER):
        d = make()
        (tid,) = d.observe(BOX, 0.0)
        d.vote(tid, first, 0.0, embedding=_face(1))
        d.observe(BOX, 0.1)
        assert d.vote(tid, VISITOR, 0.1, embedding=_face(5)) == []  # no vote for anyone: no crash, no door
        assert d.status(0.1)["tracks"][0]["votes"] == ({"resident": 1} if first is RESIDENT else {})


def test_faces_that_never_settle_on_one_are_still_reported():
    """One face, then two others taking turns: every frame unlike the last, none decided `unknown` while
    they stayed (review 4)."""
    d = make()
    events, _ = feed_faces(d, [(STRANGER, _face(1))] + [(STRANGER, _face(2)), (STRANGER, _face(3))] * 4)
    assert kinds(events) == ["unknown"]


def test_a_decided_face_with_an_unlike_frame_is_looked_at_every_frame_for_half_a_second_only():
    d = make()
    feed_faces(d, [(RESIDENT, _face(1))] * 2)
    (tid,) = d.observe(BOX, 0.6)
    d.vote(tid, STRANGER, 0.6, embedding=_face(3))
    assert d.unsettled(tid, 1.0) and not d.unsettled(tid, 1.1)     # then twice a second again
