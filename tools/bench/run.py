#!/usr/bin/env python3
"""Benchmark: our USB/IP client against the wire's floor and the published 0.0.1 client.

    python tools/bench/run.py [--smoke] [--json PATH] [--only NAME ...] [--runs N]

Everything is measured in one run, on loopback, against the project's virtual server
(``python -m usbip_backend.sim``) started in its own process. Each client runs in its own worker
process (worker.py), so the implementations never share an interpreter:

* ``raw``       - the floor: socket + struct only (rawclient.py), the same URBs;
* ``engine``    - our URB engine used directly (pipelining, scale);
* ``ours``      - our PyUSB backend through ``usb.core``;
* ``published`` - ``pyusb-usbip-backend==0.0.1`` from PyPI, installed here into a throw-away venv
  and driven through ``usb.core`` by the very same worker code;
* ``tls``       - our PyUSB backend over TLS through a local TLS terminator (tlsproxy.py), against
  plain TCP through the same terminator and plain TCP direct (``--only tls``).

With two CPUs or more, the server side (the virtual server, the TLS terminators) runs on a CPU of
its own and every client on the others (``--no-pin``: wherever the scheduler puts them). A real
USB/IP server runs on another machine (an ESP32, a Linux box), so it never takes the client's
CPU; on one shared CPU set, the scheduler often runs the server on the client's CPU right when
the client sends, and what the client does after a send then waits for the server's turn.

Runs of the implementations are interleaved (raw, ours, published, raw, ...) so that load from
elsewhere on the machine hits every side alike; figures are the median of the runs with min and
max. Only ratios mean anything across machines. The table is printed and written as JSON.
Benchmarks are not tests: the exit status is 0 whatever the figures (``--smoke`` runs a few
iterations of everything so CI can check the script works, PyPI reachable or not).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SRC = os.path.join(ROOT, "src")
WORKER = os.path.join(HERE, "worker.py")
PUBLISHED = "pyusb-usbip-backend==0.0.1"
KiB, MiB = 1024, 1 << 20
SIZES = [512, 16 * KiB, 64 * KiB, MiB]
DEPTHS = [1, 4, 16, 64]
TESTS = ["control", "bulk", "pipeline", "stream", "aio", "serial", "pending", "timeout", "cpu", "scale", "tls"]
#: The virtual server's CMD_UNLINK behaviours the timeout measurement runs against.
UNLINK_MODES = ["kernel", "status0", "ignore"]
SCALE_DEVICES = 32
STREAM_WINDOWS = [16, 64]
# Bus numbers of the loopback devices each client imports from the server (busid "<bus>-1").
BUS = {"raw": 1, "engine": 2, "ours": 3, "published": 4, "ceiling": 5, "usb1": 6, "stream": 7,
       "aio": 8, "rawaio": 9, "serial": 2,
       "rawpump": 5,  # ceiling's bus: the two never run in the same group
       # the tls group runs alone: its clients reuse buses of clients that are not running then
       "tls": 1, "hop": 5, "relay": 6}
TLSPROXY = os.path.join(HERE, "tlsproxy.py")
CERTS = os.path.join(ROOT, "tests", "certs")
TLS_SIZES = [64 * KiB, MiB]
SCALE_FIRST_BUS = 10
#: Devices one event loop drives at once (aio and rawaio), on buses after the scale devices.
LOOP_DEVICES = 64
LOOP_FIRST_BUS = SCALE_FIRST_BUS + 32


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

#: (server CPUs, client CPUs) when pinned (see the module docstring), else None; set by main().
PLACES: Optional[Tuple[Set[int], Set[int]]] = None


def place(pin: bool) -> str:
    """Pin this process (and so every client it starts) to the client CPUs; how, in words."""
    global PLACES
    getter = getattr(os, "sched_getaffinity", None)
    cpus = sorted(getter(0)) if pin and getter is not None else []
    if len(cpus) < 2:
        PLACES = None
        return "not pinned" + ("" if not pin else " (needs two CPUs and sched_setaffinity)")
    PLACES = ({cpus[-1]}, set(cpus[:-1]))
    os.sched_setaffinity(0, PLACES[1])
    return f"server side on CPU {cpus[-1]}, clients on CPU {','.join(map(str, cpus[:-1]))}"


@contextlib.contextmanager
def server_side() -> Iterator[None]:
    """Processes started inside run on the server's CPU (a child inherits its parent's affinity)."""
    if PLACES is None:
        yield
        return
    os.sched_setaffinity(0, PLACES[0])
    try:
        yield
    finally:
        os.sched_setaffinity(0, PLACES[1])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------------------
def ours_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def clean_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


class Sim:
    """The virtual server in its own process."""

    def __init__(self, count: int, unlink: str = "kernel", devices: str = "loopback") -> None:
        self.unlink = unlink
        with server_side():
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "usbip_backend.sim", "--host", "127.0.0.1", "--port", "0",
                 "--devices", devices, "--count", str(count), "--unlink", unlink],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ours_env(), text=True,
            )
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("LISTENING"):
            self.stop()
            raise RuntimeError(f"virtual server did not start (said {line!r})")
        _, self.host, port = line.split()
        self.port = int(port)

    def cpu(self) -> Optional[float]:
        """CPU seconds the server process has used (all its threads), or None off Linux."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (stat(5))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class Proxy:
    """tools/bench/tlsproxy.py in its own process in front of the virtual server: TLS with the
    test CA's server certificate, or (``tls=False``) the very same forwarder without TLS."""

    def __init__(self, sim: Sim, tls: bool) -> None:
        args = [sys.executable, TLSPROXY, "--target", f"{sim.host}:{sim.port}"]
        if tls:
            args += ["--cert", os.path.join(CERTS, "server.pem"), "--key", os.path.join(CERTS, "server.key")]
        with server_side():
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("LISTENING"):
            self.stop()
            raise RuntimeError(f"TLS terminator did not start (said {line!r})")
        _, self.host, port = line.split()
        self.port = int(port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # EOF on stdin ends it
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f and not f.closed:
                f.close()


class WorkerError(Exception):
    def __init__(self, msg: str, unsupported: bool = False) -> None:
        super().__init__(msg)
        self.unsupported = unsupported


class Worker:
    """One client implementation in its own process (see worker.py)."""

    def __init__(self, python: str, impl: str, env: Dict[str, str], sim: Sim, busid: str) -> None:
        self.proc = subprocess.Popen(
            [python, WORKER, impl, sim.host, str(sim.port), busid],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=HERE,
            text=True,
        )

    def call(self, op: str, timeout: float = 300.0, **params: Any) -> Dict[str, Any]:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **params}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(f"worker died: {self.stderr_tail()}")
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerError(f"{op} did not finish within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"worker died: {self.stderr_tail()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise WorkerError(reply["error"], reply.get("unsupported", False))
        return reply["result"]

    def stderr_tail(self) -> str:
        self.kill()
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return err.strip().splitlines()[-1] if err.strip() else f"exit status {self.proc.returncode}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(15)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.kill()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


# -- clients ---------------------------------------------------------------------------------------------
class Client:
    """How to start one implementation's workers, or why it is not available."""

    def __init__(self, name: str, python: Optional[str], impl: str, env: Dict[str, str],
                 missing: Optional[str] = None, target: Any = None) -> None:
        self.name, self.python, self.impl, self.env, self.missing = name, python, impl, env, missing
        self.target = target  # what the worker connects to instead of the virtual server (a Proxy)

    def start(self, sim: Sim, busid: Optional[str] = None) -> Worker:
        assert self.python is not None
        return Worker(self.python, self.impl, self.env, self.target or sim, busid or f"{BUS[self.name]}-1")


def has_module(python: str, module: str, env: Dict[str, str]) -> Optional[str]:
    """None if ``python`` imports ``module``, else the reason."""
    try:
        out = subprocess.run([python, "-c", f"import {module}"], env=env, cwd=HERE, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if out.returncode == 0 else (out.stderr.strip().splitlines() or ["?"])[-1]


def install_published(venv: Optional[str], tmp: str, timeout: float) -> Tuple[Optional[str], Optional[str]]:
    """(python, None) with the published client importable, or (None, reason)."""
    if venv:
        python = os.path.join(venv, "bin", "python")
        if not os.path.exists(python):
            return None, f"no python in {venv}"
    else:
        path = os.path.join(tmp, "published-venv")
        log(f"installing {PUBLISHED} into a throw-away venv ({path})")
        try:
            subprocess.run([sys.executable, "-m", "venv", path], check=True, capture_output=True,
                           timeout=120)
            python = os.path.join(path, "bin", "python")
            pip = subprocess.run(
                [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--timeout", "15",
                 "--retries", "1", PUBLISHED],
                capture_output=True, text=True, timeout=timeout, env=clean_env(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"cannot install {PUBLISHED}: {exc}"
        if pip.returncode != 0:
            tail = (pip.stderr.strip().splitlines() or ["pip failed"])[-1]
            return None, f"cannot install {PUBLISHED}: {tail}"
    why = has_module(python, "usbip_backend, usb.core", clean_env())
    if why:
        return None, f"{PUBLISHED} does not import: {why}"
    return python, None


# -- statistics and the table ----------------------------------------------------------------------------
def stats(values: Sequence[float]) -> Optional[Dict[str, float]]:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": list(values)}


class Results:
    def __init__(self) -> None:
        self.rows: List[Dict[str, Any]] = []
        self.samples: Dict[str, Dict[str, List[Any]]] = {}
        self.notes: List[str] = []

    def add(self, key: str, client: str, value: Any) -> None:
        self.samples.setdefault(key, {}).setdefault(client, []).append(value)

    def values(self, key: str, client: str, field: str) -> List[float]:
        return [v[field] for v in self.samples.get(key, {}).get(client, []) if isinstance(v, dict) and field in v]

    def error(self, key: str, client: str) -> Optional[str]:
        for v in self.samples.get(key, {}).get(client, []):
            if isinstance(v, str):
                return v
        return None

    def row(self, section: str, name: str, unit: str, ours: Any, raw: Any = None, published: Any = None,
            higher_is_better: bool = True, floors: Sequence[Tuple[str, str, float]] = (),
            note: str = "") -> Dict[str, Any]:
        """ours/raw/published: stats dicts, or a string saying why there is no figure.

        floors: (against, op, bound) with against in {"raw", "published", "value"}: the ratio
        ours/against (or ours' median itself for "value") compared with op (">=", "<=", "<").
        """
        row: Dict[str, Any] = {"section": section, "name": name, "unit": unit, "ours": ours, "raw": raw,
                               "published": published, "higher_is_better": higher_is_better, "note": note}
        o = ours["median"] if isinstance(ours, dict) else None
        for other, label in ((raw, "vs_raw"), (published, "vs_published")):
            if o is not None and isinstance(other, dict) and other["median"]:
                row[label] = paired_ratio(ours, other)
        checks = []
        for against, op, bound in floors:
            if against == "value":
                got = o
            else:
                got = row.get(f"vs_{against}")
            if got is None:
                checks.append({"floor": f"{against} {op} {bound:g}", "met": None})
                continue
            met = {">=": got >= bound, "<=": got <= bound, "<": got < bound}[op]
            checks.append({"floor": f"{'ours/' + against if against != 'value' else 'value'} {op} {bound:g}",
                           "got": got, "met": met})
        row["floors"] = checks
        self.rows.append(row)
        return row


def fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def fmt_stat(s: Any) -> str:
    if s is None:
        return "-"
    if isinstance(s, str):
        return s if len(s) <= 28 else "n/a (see notes)"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt_num(s["median"])
    return f"{fmt_num(s['median'])} ({fmt_num(s['min'])}-{fmt_num(s['max'])})"


def fmt_floor(row: Dict[str, Any]) -> str:
    parts = []
    for c in row["floors"]:
        mark = "n/a" if c["met"] is None else ("met" if c["met"] else "NOT met")
        parts.append(f"{c['floor']}: {mark}")
    return "; ".join(parts)


def table(results: Results, markdown: bool = True) -> str:
    head = ["measurement", "unit", "ours: median (min-max)", "raw floor", "ours/raw", "published 0.0.1",
            "ours/published", "floor"]
    lines = []
    rows = []
    for r in results.rows:
        rows.append([
            r["name"], r["unit"], fmt_stat(r["ours"]), fmt_stat(r["raw"]),
            fmt_num(r["vs_raw"]) if "vs_raw" in r else "-", fmt_stat(r["published"]),
            fmt_num(r["vs_published"]) if "vs_published" in r else "-",
            fmt_floor(r) + (f" [{r['note']}]" if r["note"] else ""),
        ])
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for row in rows:
            lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)


# -- the measurements ------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, sim: Sim, clients: Dict[str, Client]) -> None:
        self.args, self.sim, self.clients = args, sim, clients
        self.smoke = args.smoke
        self.runs = args.runs or (1 if args.smoke else 9)
        self.res = Results()

    def available(self, names: Sequence[str]) -> List[Client]:
        return [self.clients[n] for n in names if self.clients[n].missing is None]

    def interleaved(self, names: Sequence[str], jobs: Sequence[Tuple[str, str, Dict[str, Any]]],
                    runs: Optional[int] = None, timeout: float = 300.0,
                    busids: Optional[Dict[str, str]] = None) -> None:
        """Start one worker per client; for each run, each job, each client in turn: one call.

        jobs: (sample key, worker op, params). A client missing or failing gets its reason
        recorded as a string sample and is dropped from the rest of the group.
        """
        workers: Dict[str, Worker] = {}
        for name in names:
            client = self.clients[name]
            if client.missing is not None:
                for key, _, _ in jobs:
                    self.res.add(key, name, client.missing)
                continue
            w = client.start(self.sim, (busids or {}).get(name))
            try:
                w.call("hello", timeout=60)
                workers[name] = w
            except WorkerError as exc:
                w.close()
                for key, _, _ in jobs:
                    self.res.add(key, name, f"failed: {exc}")
        try:
            for _ in range(runs or self.runs):
                for key, op, params in jobs:
                    for name, w in list(workers.items()):
                        if self.res.error(key, name):
                            continue
                        try:
                            before = self.sim.cpu()
                            result = w.call(op, timeout=timeout, **params)
                            after = self.sim.cpu()
                            if before is not None and after is not None and params.get("n"):
                                # What the server spent per URB meanwhile: a client needing more
                                # CPU than this per URB, on a CPU of its own, is the bottleneck.
                                result["server_cpu_per"] = (after - before) / params["n"]
                            self.res.add(key, name, result)
                        except WorkerError as exc:
                            msg = "cannot" if exc.unsupported else f"failed: {exc}"
                            self.res.add(key, name, msg)
                            if "worker died" in str(exc) or "did not finish" in str(exc):
                                workers.pop(name).close()
        finally:
            for w in workers.values():
                w.close()

    def stat(self, key: str, client: str, field: str, scale: float = 1.0) -> Any:
        vals = self.res.values(key, client, field)
        if vals:
            s = stats([v * scale for v in vals])
            return s
        err = self.res.error(key, client)
        return err or "not run"

    def server_row(self, section: str, key: str, client: str) -> None:
        self.res.row(section, f"  the virtual server's CPU per URB, while {client} ran", "us",
                     self.stat(key, client, "server_cpu_per", 1e6), self.stat(key, "raw", "server_cpu_per", 1e6),
                     None, higher_is_better=False,
                     note="raw column: while raw ran; a client needing more CPU per URB than this "
                          "cannot keep the server busy (ticks of 1/%d s)" % _CLK_TCK)

    # -- 1. control round trips -----------------------------------------------------------------------
    def control(self) -> None:
        n = 40 if self.smoke else 1500
        log(f"control: GET_DESCRIPTOR(18) x {n}, {self.runs} runs")
        self.interleaved(["raw", "ours", "published", "engine", "ceiling"], [("ctrl", "ctrl", {"n": n})])
        self.res.row("control", "control GET_DESCRIPTOR(18) round trips, usb.core", "URB/s",
                     self.stat("ctrl", "ours", "rate"), self.stat("ctrl", "raw", "rate"),
                     self.stat("ctrl", "published", "rate"),
                     floors=[("raw", ">=", 0.9), ("published", ">=", 1.0)])
        self.res.row("control", "  same, engine API (conn.control_transfer)", "URB/s",
                     self.stat("ctrl", "engine", "rate"), self.stat("ctrl", "raw", "rate"))
        self.ceiling_row("control", "ctrl")

    # -- 2. bulk throughput ---------------------------------------------------------------------------
    def bulk(self) -> None:
        jobs = []
        for size in SIZES:
            total = (256 * KiB if self.smoke else 16 * MiB) if size >= 16 * KiB else (16 * KiB if self.smoke else MiB)
            n = max(total // size, 2)
            jobs.append((f"bulk_in_{size}", "bulk_in", {"size": size, "n": n}))
            jobs.append((f"bulk_out_{size}", "bulk_out", {"size": size, "n": n}))
        log(f"bulk: IN/OUT at {', '.join(map(size_name, SIZES))}, {self.runs} runs")
        self.interleaved(["raw", "ours", "published", "engine", "ceiling"], jobs)
        for size in SIZES:
            big = size >= 64 * KiB
            for d in ("in", "out"):
                key = f"bulk_{d}_{size}"
                floors: List[Tuple[str, str, float]] = []
                if big:
                    floors.append(("raw", ">=", 0.9))
                    if d == "in":
                        floors.append(("published", ">=", 1.5))
                self.res.row("bulk", f"bulk {d.upper()} {size_name(size)}, usb.core", "MiB/s",
                             self.stat(key, "ours", "rate"), self.stat(key, "raw", "rate"),
                             self.stat(key, "published", "rate"), floors=floors)
                if big:
                    self.res.row("bulk", "  same, engine API (conn.transfer)", "MiB/s",
                                 self.stat(key, "engine", "rate"), self.stat(key, "raw", "rate"))
                    self.ceiling_row("bulk", key)

    def ceiling_row(self, section: str, key: str) -> None:
        """usb.core over a backend that is nothing but the raw floor's socket code (ceiling.py):
        its ratio to the raw floor is the most any PyUSB backend can reach here."""
        row = self.res.row(section, "  same, usb.core over a bare-socket backend (ceiling)",
                           self.res.rows[-1]["unit"], self.stat(key, "ceiling", "rate"),
                           self.stat(key, "raw", "rate"))
        ceiling = self.stat(key, "ceiling", "rate")
        notes = []
        for client in ("ours", "published"):
            other = self.stat(key, client, "rate")
            if isinstance(other, dict) and isinstance(ceiling, dict):
                notes.append(f"{client}/ceiling {fmt_num(paired_ratio(other, ceiling))}")
        row["note"] = "; ".join(notes)

    # -- 3. pipelining ----------------------------------------------------------------------------------
    def pipeline(self) -> None:
        jobs = []
        for kind, size, n in (("control", 18, 60 if self.smoke else 4000),
                              ("bulk", 16 * KiB, 30 if self.smoke else 15000)):
            for depth in DEPTHS:
                jobs.append((f"pipe_{kind}_{depth}", "pipe", {"kind": kind, "depth": depth, "size": size, "n": n}))
        log(f"pipeline: {', '.join(map(str, DEPTHS))} in flight, control and bulk IN 16 KiB, {self.runs} runs")
        self.interleaved(["raw", "engine", "usb1", "rawpump"], jobs)
        single_pub = self.stat("ctrl", "published", "rate")
        for kind in ("control", "bulk"):
            base = self.stat(f"pipe_{kind}_1", "engine", "rate")
            for depth in DEPTHS:
                key = f"pipe_{kind}_{depth}"
                label = "control GET_DESCRIPTOR" if kind == "control" else "bulk IN 16 KiB"
                self.res.row("pipeline", f"{label}, {depth} in flight, engine", "URB/s",
                             self.stat(key, "engine", "rate"), self.stat(key, "raw", "rate"),
                             single_pub if kind == "control" and depth > 1 else "cannot pipeline")
                floors = [("raw", ">=", 0.9)] if kind == "bulk" and depth in (16, 64) else []
                self.res.row("pipeline", "  same, usb1 transfers resubmitted from callbacks", "URB/s",
                             self.stat(key, "usb1", "rate"), self.stat(key, "raw", "rate"), None, floors=floors)
                if kind == "bulk" and depth in (16, 64):
                    self.res.row("pipeline", "  same, a bare callback pump on a raw socket (no engine)", "URB/s",
                                 self.stat(key, "rawpump", "rate"), self.stat(key, "raw", "rate"), None,
                                 note="seqnum table, callback, resubmit: no timers, locks, unlinks or "
                                      "reader thread")
                    self.res.row("pipeline", "  CPU per URB, usb1", "us",
                                 self.stat(key, "usb1", "cpu_per", 1e6), self.stat(key, "raw", "cpu_per", 1e6),
                                 None, higher_is_better=False)
                    self.server_row("pipeline", key, "usb1")
            if kind == "control":
                ours16 = self.stat("pipe_control_16", "engine", "rate")
                self.res.row("pipeline", "control: 16 in flight / 1 in flight, engine", "ratio",
                             ratio_stat(ours16, base), ratio_stat(self.stat("pipe_control_16", "raw", "rate"),
                                                                 self.stat("pipe_control_1", "raw", "rate")),
                             "cannot pipeline", floors=[("value", ">=", 3.0)],
                             note="raw column: the raw floor's own 16/1 ratio")
                self.res.row("pipeline", "control: 16 in flight / 1 in flight, usb1", "ratio",
                             ratio_stat(self.stat("pipe_control_16", "usb1", "rate"),
                                        self.stat("pipe_control_1", "usb1", "rate")),
                             ratio_stat(self.stat("pipe_control_16", "raw", "rate"),
                                        self.stat("pipe_control_1", "raw", "rate")),
                             None, floors=[("value", ">=", 3.0)],
                             note="raw column: the raw floor's own 16/1 ratio")

    # -- 3b. windowed streaming --------------------------------------------------------------------------
    def stream(self) -> None:
        n = 30 if self.smoke else 20000
        jobs = [(f"stream_{w}", "pipe", {"kind": "bulk", "depth": w, "size": 16 * KiB, "n": n})
                for w in STREAM_WINDOWS]
        log(f"stream: bulk IN 16 KiB chunks, window {', '.join(map(str, STREAM_WINDOWS))}, {self.runs} runs")
        self.interleaved(["raw", "stream", "aio", "engine"], jobs)
        for w in STREAM_WINDOWS:
            key = f"stream_{w}"
            self.res.row("stream", f"streaming bulk IN 16 KiB chunks, window {w}, stream_in (sync)", "URB/s",
                         self.stat(key, "stream", "rate"), self.stat(key, "raw", "rate"), None,
                         floors=[("raw", ">=", 0.9)])
            self.res.row("stream", "  same, aio ep.stream (async for)", "URB/s",
                         self.stat(key, "aio", "rate"), self.stat(key, "raw", "rate"), None,
                         floors=[("raw", ">=", 0.9)])
            self.res.row("stream", "  same, submit/wait loop on the engine API", "URB/s",
                         self.stat(key, "engine", "rate"), self.stat(key, "raw", "rate"), None)
            self.res.row("stream", "  CPU per URB, stream_in (sync)", "us",
                         self.stat(key, "stream", "cpu_per", 1e6), self.stat(key, "raw", "cpu_per", 1e6), None,
                         higher_is_better=False)
            self.server_row("stream", key, "stream")

    # -- 3c. asyncio ---------------------------------------------------------------------------------------
    def aio(self) -> None:
        n = 40 if self.smoke else 6000
        jobs = [("aio_ctrl", "ctrl", {"n": n}),
                ("aio_ctrl16", "pipe", {"kind": "control", "depth": 16, "size": 18, "n": 4 * n})]
        log(f"aio: control round trips, 1 and 16 at a time, {self.runs} runs")
        self.interleaved(["raw", "engine", "aio", "rawaio"], jobs)
        self.res.row("aio", "control round trips, aio (await device.read)", "URB/s",
                      self.stat("aio_ctrl", "aio", "rate"), self.stat("aio_ctrl", "engine", "rate"), None,
                      floors=[("raw", ">=", 0.8)], note="raw column: the sync path, conn.control_transfer")
        self.res.row("aio", "  same, asyncio.Protocol client (the loop reads the socket, no engine)", "URB/s",
                      self.stat("aio_ctrl", "rawaio", "rate"), self.stat("aio_ctrl", "raw", "rate"), None,
                      note="the design aio did not take, at its floor")
        self.res.row("aio", "control, 16 coroutines at once, aio", "URB/s",
                      self.stat("aio_ctrl16", "aio", "rate"), self.stat("aio_ctrl16", "raw", "rate"), None)
        self.res.row("aio", "  same, asyncio.Protocol client", "URB/s",
                      self.stat("aio_ctrl16", "rawaio", "rate"), self.stat("aio_ctrl16", "raw", "rate"), None)
        busids = [f"{LOOP_FIRST_BUS + i}-1" for i in range(LOOP_DEVICES)]
        rounds = 3 if self.smoke else 100
        runs = 1 if self.smoke else max(2, self.runs // 3)
        log(f"aio: {LOOP_DEVICES} devices on one loop, {rounds} rounds, {runs} runs")
        for _ in range(runs):
            for name in ("aio", "rawaio"):
                w = self.clients[name].start(self.sim, busids[0])
                try:
                    self.res.add("loop64", name, w.call("scale", timeout=300, busids=busids, rounds=rounds, depth=1))
                except WorkerError as exc:
                    self.res.add("loop64", name, f"failed: {exc}")
                finally:
                    w.close()
                wait_free(self.sim, LOOP_FIRST_BUS + LOOP_DEVICES - 1)  # every device free again
        self.res.row("aio", f"{LOOP_DEVICES} devices on one loop, 1 control URB in flight on each, aio", "URB/s",
                     self.stat("loop64", "aio", "rate"), self.stat("loop64", "rawaio", "rate"), None,
                     note="raw column: the asyncio.Protocol client")
        self.res.row("aio", "  threads per device, aio", "threads",
                     self.stat("loop64", "aio", "threads_per_device"),
                     self.stat("loop64", "rawaio", "threads_per_device"), None, higher_is_better=False,
                     note="one reader thread per device, plus the loop's executor")
        self.res.row("aio", "  RSS growth per device, aio", "KiB",
                     self.stat("loop64", "aio", "rss_kib_per_device"),
                     self.stat("loop64", "rawaio", "rss_kib_per_device"), None, higher_is_better=False)

    # -- 3d. the pyserial handler -----------------------------------------------------------------------
    def serial(self) -> None:
        """usbip:// through pyserial on the virtual CDC-ACM echo (1-2, unpaced: it takes every
        write at once, as a USB-native CDC-ACM does, instead of at its line rate) against the engine on the
        loopback device (1-1) of a server of their own."""
        n = 40 if self.smoke else 1000
        total = 512 * KiB if self.smoke else 16 * MiB
        log(f"serial: 1-byte echo x {n}, {total // MiB or total / MiB} MiB echo, {self.runs} runs")
        main_sim, self.sim = self.sim, Sim(1, devices="loopback,acm-unpaced")  # not held to the 9600 baud it opens at
        try:
            self.interleaved(["serial", "engine"], [
                ("ser_echo", "echo1", {"n": n}), ("ser_ctrl", "ctrl", {"n": n}),
                ("ser_bulk", "echo_bulk", {"total": total, "block": 256 * KiB}),
            ], busids={"serial": "1-2", "engine": "1-1"})
        finally:
            self.sim.stop()
            self.sim = main_sim
        self.res.row("serial", "1-byte echo round trips through usbip:// (write, read)", "round trips/s",
                     self.stat("ser_echo", "serial", "rate"), self.stat("ser_ctrl", "engine", "rate"), None,
                     note="raw column: control round trips through the engine")
        self.res.row("serial", "usbip:// registration at interpreter start (the .pth's import)", "us",
                     registration_cost(3 if self.smoke else 15), None, None, higher_is_better=False,
                     floors=[("value", "<", 2000.0)],
                     note="python -X importtime -c pass; 'not installed' unless pip installed the package")
        self.res.row("serial", f"{size_name(total)} echo through usbip:// (256 KiB written, then read back)",
                     "MiB/s", self.stat("ser_bulk", "serial", "rate"), self.stat("ser_bulk", "engine", "rate"),
                     None, floors=[("raw", ">=", 0.5)], note="raw column: bulk loopback through the engine")

    # -- 4. control while a bulk IN is pending ------------------------------------------------------------
    def pending(self) -> None:
        n = 20 if self.smoke else 300
        log(f"pending: control latency while a bulk IN waits, {n} samples, {self.runs} runs")
        self.interleaved(["ours", "engine"],
                         [("pending", "pending", {"n": n, "read_timeout_ms": 20000, "release": True})])
        if not self.smoke:
            # The published client holds one lock per device across a whole transfer: a control
            # request waits for the bulk read's socket timeout (read timeout + 2 s). One sample.
            self.interleaved(["published"],
                             [("pending", "pending", {"n": 1, "read_timeout_ms": 300, "release": False})],
                             runs=1, timeout=60)
        for client, label in (("ours", "usb.core"), ("engine", "engine API")):
            idle = self.res.values("pending", client, "idle")
            busy = self.res.values("pending", client, "busy")
            ratio = stats([b / i for b, i in zip(busy, idle) if i]) if busy else self.stat("pending", client, "busy")
            self.res.row("pending", f"control latency while bulk IN pending / idle, {label}", "ratio",
                         ratio, None,
                         self.published_pending() if client == "ours" else None,
                         higher_is_better=False, floors=[("value", "<=", 1.5)] if client == "ours" else [])
        self.res.row("pending", "control latency while bulk IN pending, usb.core", "ms",
                     self.stat("pending", "ours", "busy", 1e3), None,
                     self.stat("pending", "published", "busy", 1e3) if not self.smoke else "skipped in --smoke",
                     higher_is_better=False)

    def published_pending(self) -> Any:
        if self.smoke:
            return "skipped in --smoke"
        idle = self.res.values("pending", "published", "idle")
        busy = self.res.values("pending", "published", "busy")
        if busy and idle:
            return stats([b / i for b, i in zip(busy, idle) if i])
        return self.stat("pending", "published", "busy")

    # -- 5. timeout accuracy -----------------------------------------------------------------------------
    def timeout(self) -> None:
        """How late a timeout is raised, against each way real servers answer CMD_UNLINK: the
        kernel's stub (-ECONNRESET), PyPI usbip 0.7.0 (status 0, the URB dropped) and servers
        that never answer (the engine's unlink grace ends the URB)."""
        log(f"timeout: 50 ms and 300 ms bulk IN timeouts against {', '.join(UNLINK_MODES)} servers, "
            f"{self.runs} runs")
        for mode in UNLINK_MODES:
            sim = self.sim if mode == "kernel" else Sim(len(BUS), unlink=mode)
            kernel_sim, self.sim = self.sim, sim
            try:
                self.interleaved(["ours", "engine"], [(f"timeout_{ms}_{mode}", "timeout", {"ms": ms})
                                                      for ms in (50, 300)])
                if mode == "kernel" and not self.smoke:
                    # Each published timeout costs the request + 2 s and breaks its connection:
                    # fresh worker, one sample per requested time (it closes the socket instead
                    # of unlinking, so the unlink behaviour does not matter to it).
                    for ms in (50, 300):
                        self.interleaved(["published"], [(f"timeout_{ms}_{mode}", "timeout", {"ms": ms})],
                                         runs=1, timeout=60)
            finally:
                self.sim = kernel_sim
                if sim is not kernel_sim:
                    sim.stop()
        for ms in (50, 300):
            for mode in UNLINK_MODES:
                key = f"timeout_{ms}_{mode}"

                def late(client: str) -> Any:
                    vals = [(v["elapsed"] - v["requested"]) * 1e3 for v in self.res.samples.get(key, {}).get(client, [])
                            if isinstance(v, dict)]
                    if not vals:
                        if client == "published" and (self.smoke or mode != "kernel"):
                            return "skipped in --smoke" if self.smoke else "-"
                        return self.res.error(key, client) or "not run"
                    s = stats(vals)
                    raised = {v["raised"] for v in self.res.samples[key][client] if isinstance(v, dict)}
                    s["raised"] = sorted(raised)
                    return s

                ours = late("ours")
                row = self.res.row("timeout", f"timeout {ms} ms, unlink={mode}: raised late by, usb.core", "ms",
                                   ours, None, late("published") if mode == "kernel" else None,
                                   higher_is_better=False, floors=[("value", "<=", 20.0)],
                                   note=raised_note(ours, late("published") if mode == "kernel" else None))
                if isinstance(ours, dict):  # the floor is on the worst run, not the median
                    worst = max(abs(ours["min"]), abs(ours["max"]))
                    row["floors"] = [{"floor": "|late| <= 20 ms (worst run)", "got": worst, "met": worst <= 20.0}]
                engine = late("engine")
                row = self.res.row("timeout", "  same, engine API", "ms", engine, None, None,
                                   higher_is_better=False)
                if isinstance(engine, dict):
                    worst = max(abs(engine["min"]), abs(engine["max"]))
                    row["floors"] = [{"floor": "|late| <= 20 ms (worst run)", "got": worst, "met": worst <= 20.0}]

    # -- 6. CPU ------------------------------------------------------------------------------------------
    def cpu(self) -> None:
        if "ctrl" not in self.res.samples:
            self.control()
        if f"bulk_in_{MiB}" not in self.res.samples:
            self.bulk()
        self.res.row("cpu", "client CPU per control URB, usb.core", "us",
                     self.stat("ctrl", "ours", "cpu_per", 1e6), self.stat("ctrl", "raw", "cpu_per", 1e6),
                     self.stat("ctrl", "published", "cpu_per", 1e6), higher_is_better=False)
        for size in (64 * KiB, MiB):
            for d in ("in", "out"):
                key = f"bulk_{d}_{size}"
                self.res.row("cpu", f"client CPU per MiB, bulk {d.upper()} {size_name(size)}, usb.core", "ms",
                             self.stat(key, "ours", "cpu_per", 1e3), self.stat(key, "raw", "cpu_per", 1e3),
                             self.stat(key, "published", "cpu_per", 1e3), higher_is_better=False)

    # -- 7. scale ----------------------------------------------------------------------------------------
    def scale(self) -> None:
        busids = [f"{SCALE_FIRST_BUS + i}-1" for i in range(SCALE_DEVICES)]
        rounds = 3 if self.smoke else 150
        runs = 1 if self.smoke else max(2, self.runs // 2)
        log(f"scale: {SCALE_DEVICES} devices, {rounds} rounds, {runs} runs")
        for _ in range(runs):
            for name in ("raw", "engine", "ours", "published"):
                client = self.clients[name]
                if client.missing is not None:
                    self.res.add("scale", name, client.missing)
                    continue
                w = client.start(self.sim, busids[0])
                try:
                    self.res.add("scale", name, w.call("scale", timeout=300, busids=busids, rounds=rounds, depth=1))
                except WorkerError as exc:
                    self.res.add("scale", name, f"failed: {exc}")
                finally:
                    w.close()
                # The server releases each device when it sees the connection close; wait for it.
                wait_free(self.sim, len(busids))
        self.res.row("scale", f"{SCALE_DEVICES} devices, 1 control URB in flight on each, one thread, engine",
                     "URB/s", self.stat("scale", "engine", "rate"), self.stat("scale", "raw", "rate"), None)
        self.res.row("scale", f"{SCALE_DEVICES} devices, one usb.core thread per device", "URB/s",
                     self.stat("scale", "ours", "rate"), None, self.stat("scale", "published", "rate"))
        self.res.row("scale", "library threads per imported device, usb.core", "threads",
                     self.stat("scale", "ours", "threads_per_device"), None,
                     self.stat("scale", "published", "threads_per_device"), higher_is_better=False,
                     floors=[("value", "<=", 1.0)])
        self.res.row("scale", "RSS growth per imported device, usb.core", "KiB",
                     self.stat("scale", "ours", "rss_kib_per_device"), None,
                     self.stat("scale", "published", "rss_kib_per_device"), higher_is_better=False,
                     floors=[("value", "<", 1024.0)])
        self.res.row("scale", "RSS growth per imported device, engine", "KiB",
                     self.stat("scale", "engine", "rss_kib_per_device"),
                     self.stat("scale", "raw", "rss_kib_per_device"), None, higher_is_better=False)


    # -- 8. TLS -----------------------------------------------------------------------------------------
    def tls(self) -> None:
        """What TLS costs: usb.core over TLS through a local TLS terminator, against plain TCP
        through the same terminator (so the extra hop is not counted as TLS) and plain TCP
        direct, interleaved run by run; and the relay alone (connect= with a bare socket-like
        object, plain TCP, no terminator)."""
        n = 40 if self.smoke else 1500
        jobs: List[Tuple[str, str, Dict[str, Any]]] = [("tls_ctrl", "ctrl", {"n": n})]
        for size in TLS_SIZES:
            count = max((256 * KiB if self.smoke else 32 * MiB) // size, 2)
            jobs.append((f"tls_bulk_in_{size}", "bulk_in", {"size": size, "n": count}))
            jobs.append((f"tls_bulk_out_{size}", "bulk_out", {"size": size, "n": count}))
        log(f"tls: control x {n}, bulk IN/OUT at {', '.join(map(size_name, TLS_SIZES))}, over TLS, through the "
            f"same terminator without TLS, direct, {self.runs} runs")
        ours = self.clients["ours"]
        if ours.missing is not None:
            for key, _, _ in jobs:
                for name in ("ours", "tls", "hop", "relay"):
                    self.res.add(key, name, ours.missing)
            proxies: List[Proxy] = []
        else:
            proxies = [Proxy(self.sim, tls=True), Proxy(self.sim, tls=False)]
            env = dict(ours.env)
            tls_env = {**env, "BENCH_TLS_CA": os.path.join(CERTS, "ca.pem")}
            self.clients["tls"] = Client("tls", ours.python, "pyusb", tls_env, target=proxies[0])
            self.clients["hop"] = Client("hop", ours.python, "pyusb", env, target=proxies[1])
            self.clients["relay"] = Client("relay", ours.python, "pyusb", {**env, "BENCH_RELAY": "1"})
        try:
            if proxies:
                self.interleaved(["ours", "tls", "hop", "relay"], jobs)
        finally:
            for proxy in proxies:
                proxy.stop()
        note = "raw column: plain TCP through the same terminator; published column: plain TCP direct"
        self.res.row("tls", "control GET_DESCRIPTOR(18) round trips over TLS (local terminator), usb.core",
                     "URB/s", self.stat("tls_ctrl", "tls", "rate"), self.stat("tls_ctrl", "hop", "rate"),
                     self.stat("tls_ctrl", "ours", "rate"), note=note)
        for size in TLS_SIZES:
            for d in ("in", "out"):
                key = f"tls_bulk_{d}_{size}"
                self.res.row("tls", f"bulk {d.upper()} {size_name(size)} over TLS (local terminator), usb.core",
                             "MiB/s", self.stat(key, "tls", "rate"), self.stat(key, "hop", "rate"),
                             self.stat(key, "ours", "rate"), note=note)
        self.res.row("tls", "client CPU per control URB over TLS, usb.core", "us",
                     self.stat("tls_ctrl", "tls", "cpu_per", 1e6), self.stat("tls_ctrl", "hop", "cpu_per", 1e6),
                     self.stat("tls_ctrl", "ours", "cpu_per", 1e6), higher_is_better=False, note=note)
        self.res.row("tls", f"client CPU per MiB, bulk IN {size_name(MiB)} over TLS, usb.core", "ms",
                     self.stat(f"tls_bulk_in_{MiB}", "tls", "cpu_per", 1e3),
                     self.stat(f"tls_bulk_in_{MiB}", "hop", "cpu_per", 1e3),
                     self.stat(f"tls_bulk_in_{MiB}", "ours", "cpu_per", 1e3), higher_is_better=False, note=note)
        relay_note = "connect= with a bare socket-like object (the relay, no TLS, no terminator); " \
                     "raw column: plain TCP direct"
        self.res.row("tls", "control round trips through the relay alone, usb.core", "URB/s",
                     self.stat("tls_ctrl", "relay", "rate"), self.stat("tls_ctrl", "ours", "rate"), None,
                     note=relay_note)
        self.res.row("tls", f"bulk IN {size_name(MiB)} through the relay alone, usb.core", "MiB/s",
                     self.stat(f"tls_bulk_in_{MiB}", "relay", "rate"), self.stat(f"tls_bulk_in_{MiB}", "ours", "rate"),
                     None, note=relay_note)


def registration_cost(runs: int) -> Any:
    """Microseconds the .pth's import of _usbip_serial_hook adds to interpreter start (median)."""
    env = clean_env()
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True,
                             text=True, env=env, timeout=60).stderr
        for line in out.splitlines():
            if line.rstrip().endswith("_usbip_serial_hook"):
                samples.append(float(line.split("|")[1]))
    return stats(samples) if samples else "not installed (pip install the package)"


def paired_ratio(a: Dict[str, Any], b: Dict[str, Any]) -> float:
    """Median of run-by-run ratios when both sides have the same runs (run i of each side ran
    back to back, so load from elsewhere on the machine hits both alike), else ratio of medians."""
    va, vb = a.get("values"), b.get("values")
    if va and vb and len(va) == len(vb) and all(vb):
        return statistics.median(x / y for x, y in zip(va, vb))
    return a["median"] / b["median"]


def ratio_stat(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict) and b["median"]:
        va, vb = a.get("values"), b.get("values")
        if va and vb and len(va) == len(vb) and all(vb):
            return stats([x / y for x, y in zip(va, vb)])
        return {"median": a["median"] / b["median"], "min": a["min"] / b["max"], "max": a["max"] / b["min"],
                "n": min(a["n"], b["n"])}
    return a if isinstance(a, str) else b


def raised_note(ours: Any, published: Any) -> str:
    parts = []
    for who, s in (("ours", ours), ("published", published)):
        if isinstance(s, dict) and s.get("raised"):
            parts.append(f"{who} raised {', '.join(s['raised'])}")
    return "; ".join(parts)


def size_name(size: int) -> str:
    if size >= MiB:
        return f"{size // MiB} MiB"
    if size >= KiB:
        return f"{size // KiB} KiB"
    return f"{size} B"


def wait_free(sim: Sim, count: int, seconds: float = 10.0) -> None:
    """Wait until the server lists ``count`` or more free devices again (OP_REQ_DEVLIST)."""
    import socket
    import struct
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((sim.host, sim.port), timeout=5) as s:
                s.sendall(struct.pack(">HHI", 0x0111, 0x8005, 0))
                head = b""
                while len(head) < 12:
                    chunk = s.recv(12 - len(head))
                    if not chunk:
                        break
                    head += chunk
                if len(head) == 12 and struct.unpack(">I", head[8:])[0] >= count:
                    return
        except OSError:
            pass
        time.sleep(0.05)  # polling a server's state from outside; not a test


# -- main ------------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few iterations of everything (for CI)")
    p.add_argument("--json", default=os.path.join(HERE, "results.json"), help="where to write the results")
    p.add_argument("--only", nargs="+", choices=TESTS, metavar="NAME", help=f"run only these: {', '.join(TESTS)}")
    p.add_argument("--runs", type=int, help="runs per measurement (default 9, 1 with --smoke)")
    p.add_argument("--published-venv", help="use this venv's python for the published client instead of "
                                            "installing it into a throw-away venv")
    p.add_argument("--no-published", action="store_true", help="do not install or run the published client")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--no-pin", action="store_true",
                   help="let the scheduler place the server and the clients (default: the server "
                        "side on a CPU of its own)")
    args = p.parse_args(argv)
    placement = place(not args.no_pin)
    log(f"placement: {placement}")
    only = args.only or TESTS
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="usbip-bench-")
    sim = None
    try:
        ours_python = sys.executable
        env = ours_env()
        missing_pyusb = has_module(ours_python, "usb.core, usbip_backend.backend", env)
        clients = {
            "raw": Client("raw", ours_python, "raw", env),
            "engine": Client("engine", ours_python, "engine", env),
            "ours": Client("ours", ours_python, "pyusb", env,
                           f"unavailable: {missing_pyusb}" if missing_pyusb else None),
            "ceiling": Client("ceiling", ours_python, "ceiling", env,
                              f"unavailable: {missing_pyusb}" if missing_pyusb else None),
            "usb1": Client("usb1", ours_python, "usb1", env),
            "stream": Client("stream", ours_python, "stream", env),
            "aio": Client("aio", ours_python, "aio", env),
            "rawaio": Client("rawaio", ours_python, "rawaio", env),
            "rawpump": Client("rawpump", ours_python, "rawpump", env),
            "serial": Client("serial", ours_python, "serial", env,
                             has_module(ours_python, "serial", env) and "unavailable: pyserial not installed"),
        }
        if args.no_published:
            pub_python, why = None, "not run (--no-published)"
        else:
            pub_python, why = install_published(args.published_venv, tmp, 120 if args.smoke else 300)
        if why:
            log(f"published client: {why}")
        clients["published"] = Client("published", pub_python, "pyusb", clean_env(), why)
        sim = Sim(LOOP_FIRST_BUS + LOOP_DEVICES - 1)
        bench = Bench(args, sim, clients)
        for name in TESTS:
            if name in only:
                getattr(bench, name)()
        res = bench.res
        if why:
            res.notes.append(f"published client: {why}")
        res.notes.append(f"placement: {placement}")
        meta = {
            "command": "python tools/bench/run.py" + (" --smoke" if args.smoke else "")
                       + (" --no-pin" if args.no_pin else "")
                       + (f" --only {' '.join(args.only)}" if args.only else ""),
            "smoke": args.smoke, "runs": bench.runs, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_before": os.getloadavg(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 1), "published": PUBLISHED, "placement": placement,
        }
        checks = [c for r in res.rows for c in r["floors"] if c["met"] is not None]
        summary = f"floors met: {sum(c['met'] for c in checks)} of {len(checks)}"
        for r in res.rows:
            for v in (r["ours"], r["raw"], r["published"]):
                if isinstance(v, str) and len(v) > 28 and not any(v in n for n in res.notes):
                    res.notes.append(f"{r['name']}: {v}")
        md = table(res)
        print(md if args.markdown else table(res, markdown=False))
        print(summary)
        for note in res.notes:
            print(f"note: {note}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"meta": meta, "summary": summary, "rows": res.rows, "samples": res.samples,
                           "notes": res.notes, "markdown": md}, fh, indent=1, default=str)
            log(f"wrote {args.json} ({meta['seconds']} s)")
    finally:
        if sim is not None:
            sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
