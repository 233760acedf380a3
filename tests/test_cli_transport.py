"""The command line over secure transports: --tls / --tls-ca through a real TLS terminator on
127.0.0.1, --via through a command that carries the stream (what ssh -W does)."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from usbip_backend import cli
from test_transport import CA, RELAY, Terminator


@pytest.fixture(scope="module")
def tls_server(_shared_sim_process):
    term = Terminator(_shared_sim_process)
    yield term.port
    term.close()


def run(capsys, *argv: str):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _via() -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(RELAY)} %h %p"


@pytest.mark.timeout(60)
def test_list_and_probe_over_tls_with_a_private_ca(capsys, tls_server):
    h = ["--host", "127.0.0.1", "--port", str(tls_server), "--tls-ca", CA]
    code, out, err = run(capsys, *h, "list", "--json")
    assert code == 0, err
    assert "1-1" in [d["busid"] for d in json.loads(out)["devices"]]
    code, out, err = run(capsys, *h, "probe", "--busid", "1-1")
    assert code == 0, err
    assert "Device 1209:0001 at busid 1-1" in out


@pytest.mark.timeout(120)
def test_check_over_tls(capsys, tls_server):
    code, out, err = run(capsys, "--host", "127.0.0.1", "--port", str(tls_server), "--tls-ca", CA, "check",
                         "--busid", "1-1")
    assert code == 0, out + err
    assert out.strip().splitlines()[-1].endswith(" 0 failed")


@pytest.mark.timeout(60)
def test_tls_with_an_untrusted_certificate_is_one_line_naming_the_fix(capsys, tls_server):
    code, out, err = run(capsys, "--host", "127.0.0.1", "--port", str(tls_server), "--tls", "list")
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("usbip-pyusb-test: error: TLS with 127.0.0.1:") and "--tls-ca FILE" in line


@pytest.mark.timeout(60)
def test_tls_to_a_plain_server_says_so(capsys, sim_server):
    code, out, err = run(capsys, "--host", sim_server[0], "--port", str(sim_server[1]), "--tls-ca", CA, "list")
    assert code == 1
    (line,) = err.strip().splitlines()
    assert "TLS" in line and "Traceback" not in err


def test_unreadable_ca_file_is_a_usage_error(capsys, sim_server, tmp_path):
    code, out, err = run(capsys, "--host", sim_server[0], "--port", str(sim_server[1]), "--tls-ca",
                         str(tmp_path / "missing.pem"), "list")
    assert code == 2 and "cannot read --tls-ca" in err


@pytest.mark.timeout(60)
def test_via_a_command_and_tls_inside_it(capsys, sim_server, tls_server):
    code, out, err = run(capsys, "--host", "127.0.0.1", "--port", str(sim_server[1]), "--via", _via(),
                         "loopback", "--busid", "1-1", "--size", "5000")
    assert code == 0, err
    assert "data matches" in out
    code, out, err = run(capsys, "--host", "127.0.0.1", "--port", str(tls_server), "--tls-ca", CA,
                         "--via", _via(), "list")
    assert code == 0, err
    assert "1-1: pid.codes (1209:0001)" in out


def test_via_a_command_that_fails_is_one_line(capsys, sim_server):
    code, out, err = run(capsys, "--host", "127.0.0.1", "--port", str(sim_server[1]), "--via",
                         f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(\"no route to jumphost\")'", "list")
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("usbip-pyusb-test: error: ") and "no route to jumphost" in line
