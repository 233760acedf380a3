"""README's shell examples are checked: each ``$ usbip-pyusb-test ...`` line in a README code
block runs against a virtual server, and what it prints is compared with the lines below it.

What legitimately varies is normalised on both sides: the server's port, rates, durations and
ETAs, and the progress lines a stream draws on a terminal. A line ``...`` in the README stands
for any number of lines. A comment after a command sets up what it needs (``# while another
client holds it``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from typing import Iterator, List, NamedTuple

import pytest

from conftest import ROOT, closed_port, start_sim_process, stop_sim_process

README = os.path.join(ROOT, "README.md")
PROGRAMS = {"usbip-pyusb-test": "usbip_backend.cli", "lsusbip": "usbip_backend.lsusbip"}


class Example(NamedTuple):
    line: int            #: README line of the command
    program: str         #: the module that runs it
    argv: List[str]      #: the command without the program name
    comment: str         #: text after '#' on the command line
    expected: List[str]  #: the lines printed below it
    block: int           #: README line where its code block starts (examples of one block run in order)


def examples(text: str) -> Iterator[Example]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        block = i + 1
        i += 1
        body: List[tuple] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        j = 0
        while j < len(body):
            number, line = body[j]
            if not line.startswith("$ ") or line[2:].split(" ", 1)[0] not in PROGRAMS:
                j += 1
                continue
            command = line[2:]
            while command.endswith("\\") and j + 1 < len(body):
                j += 1
                command = command[:-1] + " " + body[j][1].strip()
            command, _, comment = command.partition(" #")
            expected = []
            j += 1
            while j < len(body) and not body[j][1].startswith("$ "):
                expected.append(body[j][1])
                j += 1
            while expected and not expected[-1].strip():
                expected.pop()
            words = shlex.split(command)
            yield Example(number, PROGRAMS[words[0]], words[1:], comment.strip(), expected, block)


_RATE = re.compile(r"\d+(\.\d+)? [KMG]?i?B/s")
_ETA = re.compile(r"ETA \S+")
_SECONDS = re.compile(r"\bin \d+\.\d+ s\b")
_PROGRESS = re.compile(r"^(read|write) (\[[# ]*\] )?\d+(\.\d+)? [KMG]?i?B of ")


def normalise(lines: List[str], ports: dict) -> List[str]:
    out = []
    for line in lines:
        if _PROGRESS.match(line):
            continue
        for port, name in ports.items():
            line = re.sub(rf"(127\.0\.0\.1|localhost):{port}\b", rf"\1:{name}", line)
        line = re.sub(r"127\.0\.0\.1:\d{4,5}\b", "127.0.0.1:PORT", line)
        # the virtual server's mDNS name and board id come from a hash of host name and port
        line = re.sub(r"usbip-sim-[0-9a-f]{6}", "usbip-sim-ID", line)
        line = re.sub(r"board_id=[0-9a-f]{6}", "board_id=ID", line)
        line = re.sub(r"\.local:\d{4,5}\b", ".local:PORT", line)
        line = _SECONDS.sub("in T s", _ETA.sub("ETA T", _RATE.sub("R/s", line)))
        out.append(line.rstrip())
    return out


def matches(expected: List[str], actual: List[str]) -> bool:
    """``expected`` equals ``actual``, where an expected ``...`` line stands for any lines."""
    if not expected:
        return not actual
    head = expected[0].strip()
    if head == "...":
        return any(matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])




@pytest.fixture(scope="module")
def readme_sim():
    # announced on 127.0.0.1, for the discover example; a private name keeps other servers out
    proc, port = start_sim_process("--mdns")
    yield port
    stop_sim_process(proc)


ALL = list(examples(open(README, encoding="utf-8").read()))


def test_readme_has_checked_examples():
    commands = {e.argv[next(i for i, a in enumerate(e.argv) if not a.startswith("-") and a not in
                            ("127.0.0.1", "3999")) if e.argv else 0] for e in ALL if e.program == "usbip_backend.cli"}
    for command in ("discover", "list", "probe", "control", "read", "write", "loopback", "demo"):
        assert command in commands, f"README has no checked example of {command}"
    assert any(e.program == "usbip_backend.lsusbip" for e in ALL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", sorted({e.block for e in ALL}), ids=lambda b: f"README-line-{b}")
def test_readme_block(block, readme_sim, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr lines in the order they were printed
    for ex in (e for e in ALL if e.block == block):
        argv = list(ex.argv)
        ports = {readme_sim: "3240"}
        if "--port" in argv:  # an example's own port stands for one nobody listens on
            k = argv.index("--port") + 1
            closed = closed_port()
            ports[closed] = argv[k]
            argv[k] = str(closed)
        elif ex.program == "usbip_backend.lsusbip" and "127.0.0.1" in argv:  # its HOST[:PORT]
            argv[argv.index("127.0.0.1")] = f"127.0.0.1:{readme_sim}"
        elif "--host" in argv:
            argv.insert(argv.index("--host") + 2, "--port")
            argv.insert(argv.index("--host") + 3, str(readme_sim))
        held = None
        if "another client holds it" in ex.comment:
            from usbip_backend.client import import_device

            held = import_device("127.0.0.1", readme_sim, argv[argv.index("--busid") + 1], timeout=10)
        try:
            proc = subprocess.run([sys.executable, "-m", ex.program, *argv], cwd=str(tmp_path), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=100)
        finally:
            if held is not None:
                held.close()
        actual = normalise(proc.stdout.splitlines(), ports)
        expected = normalise(ex.expected, {3240: "3240"})
        assert matches(expected, actual), (
            f"README line {ex.line}: $ {ex.program} {' '.join(ex.argv)}\n--- README says:\n"
            + "\n".join(expected) + "\n--- the command printed:\n" + "\n".join(actual))
