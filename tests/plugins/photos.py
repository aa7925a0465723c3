"""Test photographs: real faces from package sdists (see tools/photos.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tools.photos import PhotosUnavailable, fetch


@dataclasses.dataclass(frozen=True)
class Photos:
    root: Path

    @property
    def singles(self) -> list[Path]:
        """Photos with exactly one face."""
        d = self.root / "face_recognition"
        return [d / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")]

    def celebrities(self, split: str) -> dict[str, list[Path]]:
        d = self.root / "celebrities" / split
        return {p.name: sorted(p.glob("*.jpg")) for p in sorted(d.iterdir()) if p.is_dir()}


@pytest.fixture(scope="session")
def photos() -> Photos:
    try:
        return Photos(fetch())
    except PhotosUnavailable as exc:
        pytest.fail(f"test photographs unavailable: {exc}", pytrace=False)
