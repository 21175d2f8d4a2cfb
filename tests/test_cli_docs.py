"""Every ``crossrec`` command line that README.md, docs/*.md and ``crossrec --help`` show is one the command accepts.

The lines are taken from the documents' code blocks, its inline code that carries arguments, and the command list
of ``crossrec --help``; their placeholders (``OUT``, ``N``, ``[--flag value]``, ``a|b``) are filled in as a reader
would. Each line goes through ``crossrec.cli.main.main`` with argparse stopped right after it parsed, so nothing
runs: a flag the command does not have, a missing argument or a value of the wrong type fails here.
"""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from crossrec.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
# docs/benchmarks.md is a dated log: its command lines are as they were run that day
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmarks.md")]
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?$")  # OUT, SRC, N, USER..., a value to fill in
VALUES = {"N": "2", "D": "2", "K": "10", "R": "0.1", "S": "1"}  # numeric placeholders


class _Parsed(Exception):
    """Raised by the patched argparse once a command line parsed: the command itself never runs."""


def _readme_lines() -> list[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in DOCS)
    lines = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        lines += [ln for ln in block.splitlines() if ln.strip().startswith("crossrec ")]
    for span in re.findall(r"`(crossrec [^`]+)`", text):
        if any(t.startswith("-") or PLACEHOLDER.match(t) for t in span.split()[1:]):
            lines.append(span)
    return lines


def _help_lines() -> list[str]:
    return [ln.strip() for ln in (cli.__doc__ or "").splitlines() if ln.strip().startswith("crossrec ")]


def _concrete(line: str) -> list[str]:
    """The command line as a reader would type it: comments and descriptions dropped, options kept, the first of
    alternatives taken, placeholders filled."""
    line = re.split(r"\s{2,}", line.strip())[0]  # a trailing comment or the --help list's description
    line = line.replace("\\|", "|")
    line = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split("|")[0], line)  # [--a x | --b y] -> --a x
    out: list[str] = []
    tokens = iter(shlex.split(line))
    for tok in tokens:
        if tok == "|":  # "--users-file F | USER...": the first form
            next(tokens, None)
            continue
        if tok == "...":  # a value after a flag, else "and more"
            if out and out[-1].startswith("--"):
                out.append("x")
            continue
        if "|" in tok and not tok.startswith("-"):
            tok = tok.split("|")[0]
        if PLACEHOLDER.match(tok):
            tok = VALUES.get(tok, tok.lower().rstrip("."))
        elif "=" in tok and tok.startswith("--") and PLACEHOLDER.match(tok.split("=", 1)[1]):
            flag, value = tok.split("=", 1)
            tok = f"{flag}={VALUES.get(value, value.lower())}"
        out.append(tok)
    return out[1:]  # without "crossrec"


LINES = sorted({*_readme_lines(), *_help_lines()})


def test_the_docs_show_command_lines():
    assert len(_readme_lines()) >= 20 and len(_help_lines()) >= 20, "the docs or --help lost their command lines"


@pytest.mark.parametrize("line", [ln for ln in LINES if not {"--help", "--version"} & set(ln.split()) and "<" not in ln])
def test_a_documented_command_line_parses(line, monkeypatch, capsys):
    original = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(self, args=None, namespace=None):
        parsed, extras = original(self, args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise _Parsed(parsed)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
    argv = _concrete(line)
    try:
        cli.main(argv)
    except _Parsed:
        return
    except SystemExit as e:
        pytest.fail(f"`{line}` (as {argv}) does not parse: {capsys.readouterr().err.strip()} (exit {e.code})")
    pytest.fail(f"`{line}` (as {argv}) ran without reaching argparse")
