"""The docs name commands, flags, files and tests; each must exist, so a renamed flag or a
moved test cannot leave a reader a command that fails or a reference that leads nowhere.
And README's "Command line" lists every subcommand the CLI has."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "examples" / "README.md"]


def _parser() -> argparse.ArgumentParser:
    from expertgate.cli import GROUPS

    parser = argparse.ArgumentParser(prog="expertgate")
    sub = parser.add_subparsers(dest="command")
    for name, (module, _) in GROUPS.items():
        importlib.import_module(module).register(sub, name)
    return parser


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _flags(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings}


def _invocations() -> list[tuple[str, str]]:
    """(document, the rest of a line) after each ``expertgate `` in the docs and the
    Makefile, with backslash-continued lines joined."""
    out = []
    for doc in [*DOCS, ROOT / "Makefile"]:
        text = doc.read_text().replace("\\\n", " ")
        out += [(doc.name, m.group(1)) for m in re.finditer(r"expertgate ([a-z][^\n`]*)", text)]
    return out


def test_every_flag_the_docs_give_a_command_exists() -> None:
    parser = _parser()
    groups = _subcommands(parser)
    wrong = []
    checked = 0
    for doc, line in _invocations():
        words = line.split()
        if words[0] not in groups:
            continue  # prose: "expertgate sits between ..."
        p = groups[words[0]]
        inner = _subcommands(p)
        if inner:
            what = words[1] if len(words) > 1 else ""
            if what.split("|")[0] not in inner:
                continue  # a usage line listing alternatives, e.g. "data list | fetch"
            p = inner[what.split("|")[0]]
        # a flag after "# " belongs to a comment; after " | " to the command that part
        # names when it names one ("data list | fetch NAME|--all"), else to this one
        parts = []
        for part in re.split(r"\s#\s", line)[0].split(" | "):
            first = part.split()[0] if part.split() else ""
            if first in inner:
                p = inner[first]
            parts.append((p, part))
        flag_re = r"(?<![\w-])(--[a-z][a-z0-9-]*)(?:[ =]([\w.-]+(?:\|[\w.-]+)+))?"
        for p, flag, value in [(p, *f) for p, part in parts for f in re.findall(flag_re, part)]:
            checked += 1
            if flag not in _flags(p):
                wrong.append(f"{doc}: expertgate {' '.join(words[:2])}: no {flag}")
                continue
            choices = next(a.choices for a in p._actions if flag in a.option_strings)
            if value and choices is not None:  # "--format a|b|c": each one a choice
                wrong += [f"{doc}: expertgate {' '.join(words[:2])} {flag}: no choice {v!r}"
                          for v in value.split("|") if v not in choices]
    assert checked > 100
    assert not wrong, "\n".join(wrong)


def test_every_file_and_test_the_docs_name_exists() -> None:
    ref = re.compile(r"(?<![\w/.-])((?:tests|gateway|routers|evals|expertgate|scripts|docker)"
                     r"/[\w/.-]*\.(?:py|sh|conf|yaml|yml))(?:::(\w+))?")
    missing = []
    for doc in [*DOCS, *sorted((ROOT / "docs" / "results").glob("*.md"))]:
        for m in ref.finditer(doc.read_text()):
            path = ROOT / m.group(1)
            if not path.exists():
                missing.append(f"{doc.name}: {m.group(1)}")
            elif m.group(2) and not re.search(rf"def {m.group(2)}\w*\(|class {m.group(2)}\b",
                                              path.read_text()):
                missing.append(f"{doc.name}: {m.group(0)}")
    assert not missing, "\n".join(missing)


def test_the_readmes_command_line_lists_every_subcommand() -> None:
    block = (ROOT / "README.md").read_text().split("## Command line", 1)[1].split("```")[1]
    absent = []
    for name, p in _subcommands(_parser()).items():
        inner = _subcommands(p)
        for what in inner or [""]:
            # the word after the command, after a " | " or in an "a|b" alternative
            pattern = rf"^expertgate {name}\b" + (rf" (?:[^#\n]*? \| )?(?:\w+\|)*{what}\b"
                                                   if what else "")
            if not re.search(pattern, block, re.M):
                absent.append(f"expertgate {name} {what}".strip())
    assert not absent, f"README's Command line does not list {absent}"


def test_every_make_target_the_docs_name_exists() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = {m for doc in DOCS for m in re.findall(r"`make ([a-z][\w-]*)", doc.read_text())}
    named |= {"demo", "test"}  # README's opening block
    assert named, "no make target found in the docs"
    assert named <= targets, f"no such make target: {sorted(named - targets)}"


def test_every_environment_variable_the_docs_name_is_read() -> None:
    """A setting of gateway/config.py (``EXPERTGATE_`` + its field) or a name the code,
    the compose file or a test reads by name."""
    from gateway.config import Settings

    fields = {name.upper() for name in Settings.model_fields}
    code = "\n".join(p.read_text() for d in ("gateway", "routers", "evals", "expertgate",
                                            "tests")
                     for p in (ROOT / d).rglob("*.py") if p.name != Path(__file__).name)
    code += (ROOT / "docker-compose.yml").read_text()
    named = {v for doc in DOCS for v in re.findall(r"EXPERTGATE_([A-Z0-9_]+)", doc.read_text())}
    assert len(named) > 10
    unread = sorted(v for v in named if v not in fields and f"EXPERTGATE_{v}" not in code
                    and not v.endswith("_"))
    assert not unread, f"the docs name EXPERTGATE_{unread} that nothing reads"


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    heads = re.findall(r"^#+ (.*)$", doc.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_between_the_docs_leads_somewhere() -> None:
    broken = []
    for doc in [*DOCS, *sorted((ROOT / "docs" / "results").glob("*.md"))]:
        for href in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if href.startswith(("http://", "https://", "mailto:")) or not re.search(
                    r"[./#]", href):
                continue  # a web page, or prose such as experts[i](name)
            path, _, anchor = href.partition("#")
            target = (doc.parent / path) if path else doc
            if not target.exists():
                broken.append(f"{doc.name}: {href}")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{doc.name}: {href} (no such heading)")
    assert not broken, "\n".join(broken)


def test_no_help_page_shows_docstring_markup(capsys: pytest.CaptureFixture[str]) -> None:
    """`expertgate --help` opened with "The ``expertgate`` command line."; eval guard's and
    embedder finetune's pages showed their module docstrings' markup too."""
    from expertgate.cli import main

    pages = [[]]
    for name, p in _subcommands(_parser()).items():
        pages.append([name])
        pages += [[name, what] for what in _subcommands(p)]
    shown = []
    for page in pages:
        with pytest.raises(SystemExit):
            main([*page, "--help"])
        text = capsys.readouterr().out
        assert "usage: expertgate" in text
        if "``" in text:
            shown.append(" ".join(page) or "(top)")
    assert len(pages) > 20
    assert not shown, f"--help shows ``markup`` on: {shown}"


@pytest.mark.parametrize(("group", "lists"), [("eval", "offpolicy"), ("embedder", "distill")])
def test_a_group_without_its_command_shows_its_own_commands(
        group: str, lists: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`expertgate eval` printed the top-level help, which does not list eval's commands."""
    from expertgate.cli import main

    assert main([group]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"usage: expertgate {group} ")
    assert lists in out
