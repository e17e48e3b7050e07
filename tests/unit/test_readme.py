"""The README stays true: every setting documented, the two commands shown."""

from __future__ import annotations

from pathlib import Path

from dispatcher.config import VARIABLES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [name for name, _, _ in VARIABLES if f"`{name}`" not in README]
    assert not missing, f"document these settings in README.md: {missing}"


def test_the_two_commands_are_shown() -> None:
    assert "make run" in README
    assert "make test" in README
