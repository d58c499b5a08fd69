"""README.md is a short manual whose quick commands run as written (issue "README as a manual").

A fenced block whose opening fence directly follows the line ``<!-- runnable -->`` is run:

* a ``bash`` block line by line: every non-comment line is one shell command (a trailing ``\\``
  continues it), run with cwd = the repository root, ``PYTHONPATH`` = the repository root and a
  leading ``python `` replaced by this interpreter, within a timeout; it must exit with status 0, and
  each ``# expect: TEXT`` line after it names a TEXT its stdout must contain;
* a ``python`` block is exec'd (cwd = the repository root).

Also: at least three runnable blocks, at most 350 lines, and every relative link of README.md
(``[text](docs/x.md)``, ``[text](results/y.md#anchor)``, ``[text](#anchor)``) reaches an existing
file and, where it names one, a heading of that file.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = "<!-- runnable -->"
MAX_LINES = 350
MIN_RUNNABLE = 3
COMMAND_TIMEOUT_S = 90
EXPECT = re.compile(r"^#\s*expect:\s?(.*)$")


def runnable_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(1-based line of the opening fence, language, body lines) of every block marked runnable."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise AssertionError(f"README.md:{i + 1}: {MARK} is not directly followed by an opening ``` fence")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise AssertionError(f"README.md:{i + 2}: runnable block is never closed")
        found.append((i + 2, lines[i + 1][3:].strip().lower(), lines[i + 2:end]))
    return found


def bash_commands(body: list[str]) -> list[tuple[str, list[str]]]:
    """The block's commands, each with the texts its ``# expect:`` lines require in its stdout."""
    commands: list[tuple[str, list[str]]] = []
    pending = ""
    for raw in body:
        line = raw.rstrip()
        if pending:
            line = pending + " " + line.lstrip()
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            m = EXPECT.match(stripped)
            if m:
                assert commands, f"'{stripped}' comes before any command"
                commands[-1][1].append(m.group(1).strip())
            continue
        commands.append((stripped, []))
    assert not pending, "the block ends inside a continued line"
    return commands


def with_this_python(command: str) -> str:
    """A leading ``python `` (the README's spelling) becomes this interpreter."""
    return shlex.quote(sys.executable) + command[len("python"):] if command.startswith("python ") else command


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _readme() -> str:
    return README.read_text(encoding="utf-8")


BLOCKS = runnable_blocks(_readme())


def test_readme_is_short():
    n = len(_readme().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; at most {MAX_LINES} (move details to docs/ or results/)"


def test_readme_has_runnable_blocks():
    assert len(BLOCKS) >= MIN_RUNNABLE, f"{len(BLOCKS)} runnable blocks in README.md; want at least {MIN_RUNNABLE}"
    for line, lang, body in BLOCKS:
        assert lang in ("bash", "python"), f"README.md:{line}: runnable block language {lang!r} (bash or python)"
        assert any(s.strip() and not s.strip().startswith("#") for s in body), f"README.md:{line}: empty block"


def run_block(line: int, lang: str, body: list[str]) -> None:
    """Run one runnable block as the module docstring says; an AssertionError names what failed."""
    if lang == "python":
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            exec(compile("\n".join(body) + "\n", f"README.md:{line}", "exec"), {"__name__": "__readme__"})
        finally:
            os.chdir(cwd)
        return
    assert lang == "bash", f"README.md:{line}: cannot run a {lang!r} block"
    for command, expects in bash_commands(body):
        try:
            r = subprocess.run(with_this_python(command), shell=True, executable="/bin/bash", cwd=ROOT,
                               env=_env(), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"README.md:{line}: `{command}` ran past {COMMAND_TIMEOUT_S} s") from None
        detail = f"README.md:{line}: `{command}`\n--- stdout ---\n{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}"
        assert r.returncode == 0, f"exit status {r.returncode}\n{detail}"
        for text in expects:
            assert text in r.stdout, f"'{text}' not in stdout\n{detail}"


@pytest.mark.parametrize("line,lang,body", BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_runnable_block(line, lang, body):
    run_block(line, lang, body)


# --------------------------------------------------------------------------- links
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", FENCE.sub("", path.read_text(encoding="utf-8")), re.M):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", text)) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_readme_relative_links_exist():
    links = relative_links(_readme())
    assert links, "README.md links to no file"
    problems = []
    for target in links:
        path_part, _, anchor = target.partition("#")
        path = README if not path_part else (ROOT / path_part)
        if not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            problems.append(f"{target}: no heading with anchor #{anchor} in {path.relative_to(ROOT)}")
    assert not problems, "README.md links:\n" + "\n".join(problems)


def test_readme_runner_checks_status_and_expectations():
    run_block(0, "bash", ["python -c 'print(42)'", "# expect: 42", "test -f README.md"])
    run_block(0, "python", ["import os", "assert os.path.exists('README.md')"])
    for body, message in ((["false"], "exit status 1"), (["echo 41", "# expect: 42"], "'42' not in stdout")):
        with pytest.raises(AssertionError, match=message):
            run_block(0, "bash", body)


def test_readme_parser_reads_commands_and_expectations():
    cmds = bash_commands(["python a.py \\", "    --x 1   # note", "# expect: ok", "# a comment", "", "ls"])
    assert cmds == [("python a.py --x 1   # note", ["ok"]), ("ls", [])]
    assert with_this_python("python -m x").startswith(shlex.quote(sys.executable))
    assert with_this_python("pythonx -m x") == "pythonx -m x"
    assert _slug("HAWQ-V3's own checkpoints") == "hawq-v3s-own-checkpoints"
    assert _slug("Training: `quant_train.py`") == "training-quant_trainpy"
