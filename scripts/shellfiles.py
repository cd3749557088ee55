"""Generate the man page and the bash and zsh completions of `vmhooks` from
its argparse parser, at build time (`make shell-files`, run by `make install`).

    python scripts/shellfiles.py OUTDIR

writes OUTDIR/vmhooks.1, OUTDIR/vmhooks.bash and OUTDIR/_vmhooks. The
libraries (shtab for the completions, argparse-manpage for the man page)
are build-time dependencies (`pip install .[build]`), never the agent's.
Nothing is written by hand: a new subcommand or flag shows up in all three
files the next time they are built, and tests/test_shellfiles.py checks
that every one of them does. Set SOURCE_DATE_EPOCH for a reproducible date.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import shtab

from vmhooks import __version__
from vmhooks.cli import build_parser
from vmhooks.points import POINTS

DESCRIPTION = "VDSM-compatible VM lifecycle hooks on libvirt"
POINT_WORDS = " ".join(POINTS)
# Completion of hook point names: a bash function shtab's script calls with
# the word to complete, and a zsh value list.
BASH_PREAMBLE = f'_vmhooks_points() {{ compgen -W "{POINT_WORDS}" -- "$1"; }}\n'
POINT_COMPLETION = {"bash": "_vmhooks_points", "zsh": f"({POINT_WORDS})"}
# Lines may not start with "[" or "/": argparse-manpage reads those as headers.
MAN_EXTRA = """[FILES]
.TP
.B /etc/vmhooks/vmhooks.toml
the agent's settings (\\fBvmhooks serve --config\\fR)
.TP
.B /usr/libexec/vdsm/hooks
the hooks root: one directory per hook point (\\fB$VMHOOKS_HOOKS_DIR\\fR)
.TP
.B /var/lib/vmhooks
the agent's state: VMs and hook history (SQLite), hibernation images
.TP
.B /run/vmhooks/vmhooks.sock
the agent's API socket (\\fB$VMHOOKS_SOCKET\\fR)

[ENVIRONMENT]
.TP
.B VMHOOKS_HOOKS_DIR
the default hooks root
.TP
.B VMHOOKS_SOCKET
the default agent socket for the client commands

[>SEE ALSO]
README.md and docs/admin.md, installed under share/doc/vmhooks.
"""


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command's path and parser, the root's first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, (*path, name))


def annotate(parser: argparse.ArgumentParser) -> None:
    """Tell shtab which arguments are files, directories and hook points."""
    for _, command in subcommands(parser):
        for action in command._actions:
            metavar = str(action.metavar or "")
            if action.dest == "point":
                action.complete = POINT_COMPLETION  # type: ignore[attr-defined]
            elif "DIR" in metavar or action.dest.endswith("_dir"):
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
            elif "FILE" in metavar or action.type is Path or action.dest in ("xml", "socket", "config"):
                action.complete = shtab.FILE  # type: ignore[attr-defined]


def examples(parser: argparse.ArgumentParser) -> str:
    """An EXAMPLES section from the examples every command's --help ends with."""
    lines = []
    for _, command in subcommands(parser):
        for line in (command.epilog or "").splitlines()[1:]:
            lines += [".TP", ".B " + line.strip().replace("\\", "\\\\").replace("-", "\\-"), ""]
    return "[EXAMPLES]\nEvery command's \\fB--help\\fR ends with its examples:\n" + "\n".join(
        line for line in lines if line
    )


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    parser = build_parser()
    annotate(parser)
    bash = out / "vmhooks.bash"
    bash.write_text(shtab.complete(parser, shell="bash", preamble=BASH_PREAMBLE))
    zsh = out / "_vmhooks"
    zsh.write_text(shtab.complete(parser, shell="zsh"))
    man = out / "vmhooks.1"
    with tempfile.NamedTemporaryFile("w", suffix=".include") as include:
        include.write(examples(parser) + "\n\n" + MAN_EXTRA)
        include.flush()
        subprocess.run(
            [sys.executable, "-c", "import sys; from argparse_manpage.cli import main; sys.exit(main())",
             "--module", "vmhooks.cli", "--function", "build_parser", "--prog", "vmhooks",
             "--project-name", "vmhooks", "--version", __version__, "--description", DESCRIPTION,
             "--manual-title", "vmhooks manual", "--include", include.name, "--output", str(man)],
            check=True,
        )  # fmt: skip
    return [man, bash, zsh]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    for path in generate(Path(sys.argv[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
