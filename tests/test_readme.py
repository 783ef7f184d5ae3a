"""The README is a contract too: its commands exist and its config table lists every setting."""

from __future__ import annotations

import re
from pathlib import Path

from netstack.config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _table_keys() -> set[str]:
    keys = set()
    for line in README.splitlines():
        match = re.match(r"\| `(\[\w+\] )?(\w+)` \|", line)
        if match:
            section = match[1].strip()[1:-1] + "." if match[1] else ""
            keys.add(section + match[2])
    return keys


def test_config_table_lists_every_setting() -> None:
    documented = _table_keys()
    missing = [s.key for s in SETTINGS if s.key not in documented]
    assert not missing, f"README config table lacks: {missing}"


def test_config_table_flags_match_the_cli() -> None:
    for setting in SETTINGS:
        row = next(
            (line for line in README.splitlines() if f"`{setting.key.split('.')[-1]}` |" in line),
            "",
        )
        if setting.cli:
            assert f"`{setting.flag}`" in row, f"{setting.key}: README row lacks {setting.flag}"


def test_the_two_commands_are_there() -> None:
    assert "sudo bash deploy/bootstrap.sh run" in README
    assert "sudo bash deploy/bootstrap.sh test" in README
    assert (ROOT / "deploy" / "bootstrap.sh").exists()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash deploy/bootstrap.sh test" in ci
