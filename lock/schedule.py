"""Per-person schedules: on which days and between which hours a person may enter."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os

log = logging.getLogger(__name__)

# systemd-timesyncd, the time client of Raspberry Pi OS and Debian, touches this file each time a time
# server has answered (systemd-timesyncd.service(8), FILES; since systemd 239).  /run is emptied at every
# boot, and the file also goes whenever timesyncd stops or restarts (its RuntimeDirectory: an upgrade of
# it, `systemctl restart`).  So: seen since this boot, the clock came from a time server, and not only
# from the time saved shortly before the power went (/var/lib/systemd/timesync/clock, fake-hwclock), which
# a Pi without a clock battery starts with after a power cut, behind by the length of the cut.  Once seen,
# that stays true for the rest of the boot (TimeSync).  Not used: adjtimex(2), which the unit's
# ProtectClock=yes forbids (timedatectl asks systemd-timedated over D-Bus, which calls it).
TIME_SYNC_FILE = "/run/systemd/timesync/synchronized"
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MIDNIGHT = dt.time.max  # "24:00": the end of the day


def clock_synchronized(path: str | os.PathLike | None = None) -> bool:
    """True while timesyncd's file says a time server has set the clock (see TIME_SYNC_FILE)."""
    return os.path.exists(TIME_SYNC_FILE if path is None else path)


def boot_id() -> str | None:
    """This boot's id (a new one at every boot); None where the kernel gives none (then only
    timesyncd's file counts: nothing is remembered that a reboot could not be told from)."""
    try:
        with open(BOOT_ID_FILE, encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, ValueError):
        return None


class TimeSync:
    """Whether a time server has set the clock since boot: true from the first time
    :func:`clock_synchronized` is, for the rest of the boot, even after timesyncd, restarted, has
    removed its file.  ``synced_boot`` is the boot id it was seen under (kept in the daemon's
    state.json, so that a restart of the lock in such a moment keeps it too)."""

    def __init__(self, synced_boot: str | None = None) -> None:
        boot = boot_id()
        # an earlier boot's (after a reboot), or anything else: nothing seen this boot yet
        self.synced_boot = synced_boot if boot is not None and synced_boot == boot else None

    def __call__(self) -> bool:
        boot = boot_id()
        if clock_synchronized():
            self.synced_boot = boot
            return True
        return boot is not None and self.synced_boot == boot


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Days (``"mon"``..``"sun"``) and a local time range [start, end).

    ``end`` earlier than ``start`` means the range runs past midnight (e.g.
    22:00-06:00); the day named is the day the range starts.  An end of
    ``24:00`` (stored as :data:`MIDNIGHT`) is the end of the day, so
    00:00-24:00 is the whole day.  :meth:`parse` refuses an empty range (start == end).
    """

    days: tuple[str, ...] = DAYS
    start: dt.time = dt.time(0, 0)
    end: dt.time = dt.time.max

    def __post_init__(self) -> None:
        bad = [d for d in self.days if d not in DAYS]
        if bad or not self.days:
            raise ValueError(f"schedule days must be among {', '.join(DAYS)}; got {list(self.days)!r}")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            # the door compares them with the local time of day, which has no zone
            raise ValueError("schedule hours are local times: leave out the time zone (Z, +01:00)")

    @property
    def always(self) -> bool:
        """Every day, the whole day: no clock can make it refuse anyone."""
        return set(self.days) == set(DAYS) and self.start == dt.time(0, 0) and self.end == MIDNIGHT

    def allows(self, when: dt.datetime) -> bool:
        t = when.time()
        day = DAYS[when.weekday()]
        if self.start <= self.end:
            return day in self.days and self.start <= t < self.end
        if t >= self.start:
            return day in self.days
        yesterday = DAYS[(when.weekday() - 1) % 7]
        return t < self.end and yesterday in self.days

    @classmethod
    def parse(cls, days: str, hours: str) -> "Schedule":
        """From the CLI's words: days ``"mon-fri"`` or ``"mon,wed,sat"``, hours ``"07:00-19:00"``."""
        days = days.strip().lower()
        if "-" in days and "," not in days:
            a, b = days.split("-", 1)
            if a not in DAYS or b not in DAYS:
                raise ValueError(f"days {days!r}: use e.g. mon-fri or mon,wed,sat")
            i, j = DAYS.index(a), DAYS.index(b)
            picked = tuple(DAYS[k % 7] for k in range(i, i + ((j - i) % 7) + 1))
        else:
            picked = tuple(d.strip() for d in days.split(",") if d.strip())
        try:
            a, b = hours.split("-", 1)
            start = dt.time.fromisoformat(a.strip())
            end = MIDNIGHT if b.strip() in ("24:00", "24:00:00") else dt.time.fromisoformat(b.strip())
        except ValueError:
            raise ValueError(f"hours {hours!r}: use HH:MM-HH:MM, e.g. 07:00-19:00") from None
        if start.tzinfo is not None or end.tzinfo is not None:
            raise ValueError(f"hours {hours!r}: local times without a time zone, e.g. 07:00-19:00")
        if start == end:  # refused when set; one stored by an older version still loads (and never allows)
            raise ValueError(f"hours {hours!r} would never let anyone in; for the whole day use 00:00-24:00")
        return cls(days=picked, start=start, end=end)

    def to_json(self) -> str:
        return json.dumps({"days": list(self.days), "start": self.start.isoformat(), "end": self.end.isoformat()})

    @classmethod
    def from_json(cls, text: str) -> "Schedule":
        d = json.loads(text)
        start, end = dt.time.fromisoformat(d["start"]), dt.time.fromisoformat(d["end"])
        if start.tzinfo is not None or end.tzinfo is not None:
            # Stored by a version that took hours with a time zone: read as a schedule that lets no
            # one in (like an empty range), not an error that would stop every lookup of the gallery.
            log.warning("a stored schedule has hours with a time zone (%s-%s), which are not taken: it lets "
                        "no one in until it is set again (lock faces schedule NAME DAYS HH:MM-HH:MM)",
                        d["start"], d["end"])
            start = end = start.replace(tzinfo=None)
        return cls(days=tuple(d["days"]), start=start, end=end)

    def __str__(self) -> str:
        end = "24:00" if self.end == MIDNIGHT else self.end.strftime("%H:%M")
        return f"{','.join(self.days)} {self.start.strftime('%H:%M')}-{end}"
