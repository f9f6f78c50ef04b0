"""The CLI reference docs/cli.md covers every command: a `## clipvdb <command path>` heading per
command of the Click group, and docs/cli_reference.py --check finds the file current."""

import subprocess
import sys
from pathlib import Path

import click

from clipvdb.cli import cli as group

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "cli.md"


def _command_paths(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command under `command` (groups included, hidden ones left out), as name paths."""
    if not isinstance(command, click.Group):
        return []
    ctx = click.Context(command, info_name=path[-1] if path else "clipvdb")
    out = []
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        out.append((*path, name))
        out += _command_paths(sub, (*path, name))
    return out


def test_every_command_has_a_heading_in_the_cli_reference():
    commands = _command_paths(group)
    assert ("ingest",) in commands and ("db", "nodes", "start") in commands, commands  # the walk reaches depth 2
    assert REFERENCE.is_file(), f"{REFERENCE.relative_to(ROOT)} is missing: write it (python docs/cli_reference.py)"
    headings = set(REFERENCE.read_text(encoding="utf-8").splitlines())
    missing = [" ".join(c) for c in commands if f"## clipvdb {' '.join(c)}" not in headings]
    assert not missing, f"{REFERENCE.relative_to(ROOT)} has no '## clipvdb <command>' heading for: {', '.join(missing)}"


def test_cli_reference_is_current():
    script = ROOT / "docs" / "cli_reference.py"
    r = subprocess.run([sys.executable, str(script), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{script.relative_to(ROOT)} --check exited {r.returncode}:\n{r.stdout}{r.stderr}"
