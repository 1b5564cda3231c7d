"""mkdocs hook: the page ``cli-reference.md`` is generated from the commands themselves (``--help`` of
every command and command group, as the terminal shows it), so the reference cannot drift from the code."""

from __future__ import annotations

import os

from mkdocs.structure.files import File

PAGE = "cli-reference.md"


def _commands(group, prefix=()):
    """(words, command) for every command under a click group, depth first, in the order they are listed."""
    for name, cmd in group.commands.items():
        words = (*prefix, name)
        if hasattr(cmd, "commands"):
            yield words, cmd
            yield from _commands(cmd, words)
        else:
            yield words, cmd


def render() -> str:
    import typer
    from typer.testing import CliRunner

    from fastdpt.cli import app

    os.environ["COLUMNS"] = "110"  # one width for every build
    runner = CliRunner()
    parts = ["# Every command's options\n\nGenerated from `fastdpt COMMAND --help` when this site was built.\n"]
    for words, _ in [((), None), *_commands(typer.main.get_command(app))]:
        result = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "110", "NO_COLOR": "1", "TERM": "dumb"})
        if result.exit_code != 0:
            raise RuntimeError(f"fastdpt {' '.join(words)} --help failed: {result.output}")
        title = " ".join(("fastdpt", *words))
        parts.append(f"## `{title}`\n\n```text\n{result.output.rstrip()}\n```\n")
    return "\n".join(parts)


def on_files(files, config):
    files.append(File.generated(config, PAGE, content=render()))
    return files
