"""errors.describe_status: a URB status (a negated *Linux* errno, whatever the host) in words."""

from __future__ import annotations

import os
import sys

import pytest

from usbip_backend import errors
from usbip_backend.errors import URB_STATUS_TEXT, LinuxErrno, describe_status


@pytest.mark.timeout(10)
def test_every_linux_errno_the_package_names_has_a_usb_meaning():
    for err in LinuxErrno:
        assert -err.value in URB_STATUS_TEXT, err.name
    assert describe_status(-32) == "endpoint stalled (EPIPE), status -32"
    assert describe_status(-28) == "no bandwidth left for the transfer (ENOSPC), status -28"


@pytest.mark.timeout(10)
def test_an_unknown_status_is_not_worded_from_another_hosts_errno_table(monkeypatch):
    """On macOS 113 is not EHOSTUNREACH's number: the host's strerror would name another error."""
    monkeypatch.setattr(sys, "platform", "darwin")
    assert describe_status(-113) == "errno 113 (a Linux errno), status -113"
    monkeypatch.setattr(sys, "platform", "linux")
    assert describe_status(-113) == f"errno 113 ({os.strerror(113)}), status -113"
    assert errors.describe_status(0).endswith("status 0")
