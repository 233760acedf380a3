"""``mypy --strict src/``: the whole package, since it ships py.typed (users type-check against
every public module, and the CLI and the virtual server are held to the same rules)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

STRICT = ["src/"]


@pytest.mark.timeout(300)
def test_package_passes_mypy_strict(tmp_path):
    try:
        import mypy  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("mypy is not installed (it is in the [test] extra: pip install '.[test]')")
        pytest.skip("mypy is not installed: pip install mypy (or '.[test]')")
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict",
                          "--cache-dir", str(tmp_path), *STRICT],
                         cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout
