#!/usr/bin/env python3
"""The audit log's memory as it grows: SQLite's page cache, with its default size and with the lock's.

    python bench/audit_memory.py [--events 40000]

Records door events into a fresh audit log (lock/audit.py, as the daemon does) and prints, every 5,000
events, the growth of the memory SQLite holds (sqlite3_memory_used, read through ctypes from the library
Python's sqlite3 uses) and of the process's heap (RssAnon), once with SQLite's default cache (-2000, that
is 2,000 KiB) and once with lock.audit.CACHE_KIB.  Each in its own process, so neither sees the other's heap.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_anon_mb() -> float:
    # Not bench/faults.py's proc_rss_kb: importing it (OpenCV and more) fills the heap with free space that
    # SQLite's cache then reuses, and the heap column no longer shows the cache growing.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(cache_kib: int, events: int) -> dict:
    import lock.audit as audit
    from lock import events as ev
    from lock.config import AuditSettings

    lib = ctypes.CDLL(ctypes.util.find_library("sqlite3"))
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    audit.CACHE_KIB = cache_kib
    with tempfile.TemporaryDirectory() as tmp:
        log = audit.AuditLog(AuditSettings(path=str(Path(tmp) / "audit.db")))
        log.open()
        used0, anon0 = lib.sqlite3_memory_used(), rss_anon_mb()
        rows = []
        kinds = (ev.RECOGNIZED, ev.LOCK_STATE, ev.LOCK_STATE, ev.UNKNOWN)
        for n in range(1, events + 1):
            kind = kinds[n % 4]
            log.record(ev.Event.now(kind, "a new user" if kind == ev.RECOGNIZED else None,
                                    private={"score": 0.8123}, frames=4))
            if n % 5000 == 0 or n == events:
                size = sum(p.stat().st_size for p in Path(tmp).iterdir() if p.name.startswith("audit.db"))
                rows.append({"events": n, "sqlite_kib": round((lib.sqlite3_memory_used() - used0) / 1024, 1),
                             "rss_anon_mb": round(rss_anon_mb() - anon0, 2), "files_mb": round(size / 1e6, 2)})
        log.close()
    return {"cache_kib": cache_kib, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=40000)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(run(args.child, args.events)))
        return 0
    from lock.audit import CACHE_KIB
    results = {}
    for label, kib in (("sqlite_default", 2000), ("lock", CACHE_KIB)):
        out = subprocess.run([sys.executable, __file__, "--events", str(args.events), "--child", str(kib)],
                             check=True, capture_output=True, text=True).stdout
        r = results[label] = json.loads(out.strip().splitlines()[-1])
        print(f"== cache {kib} KiB ({label}): growth since the log was opened")
        for row in r["rows"]:
            print(f"  {row['events']:6d} events: SQLite holds +{row['sqlite_kib']:7.1f} KiB, heap (RssAnon) "
                  f"+{row['rss_anon_mb']:.2f} MB; log files {row['files_mb']:.2f} MB")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
