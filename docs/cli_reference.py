"""Write docs/cli.md from the CLI's own --help: `python docs/cli_reference.py [--check]`.

Every command and subcommand gets a `## clipvdb <command path>` heading and its --help text, at a fixed
width, so the file changes only when the CLI does. --check exits 1 when docs/cli.md is stale.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["COLUMNS"] = "100"  # before click reads the terminal size

import click  # noqa: E402

from clipvdb.cli import cli  # noqa: E402

OUT = Path(__file__).with_name("cli.md")
WIDTH = 100


def sections(command: click.Command, path: list[str], parent: click.Context | None = None) -> list[str]:
    settings = {**command.context_settings, "max_content_width": WIDTH, "terminal_width": WIDTH}
    ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
    out = [f"## {' '.join(path)}\n\n```text\n{command.get_help(ctx).rstrip()}\n```\n"]
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += sections(sub, [*path, name], ctx)
    return out


def render() -> str:
    head = (
        "# CLI reference\n\n"
        "Generated from `clipvdb --help` by `docs/cli_reference.py` (`make docs`); do not edit by hand.\n"
    )
    return head + "\n" + "\n".join(sections(cli, ["clipvdb"]))


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/cli.md is stale; run make docs", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
