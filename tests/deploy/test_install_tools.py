"""deploy/install-tools.sh: valid bash, and harmless where it cannot install (it must
never fail `make test`)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from deploy_support import DEPLOY

SCRIPT = DEPLOY / "install-tools.sh"


def test_bash_syntax():
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
    out = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_exits_zero_when_it_cannot_install(tmp_path):
    """Not root and none of the tools on PATH: it says so, installs nothing, exits 0."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "printf", "dirname", "uname", "grep", "head"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bindir / tool)
    # An `id` that says "not root", whoever runs the tests.
    (bindir / "id").write_text(f"#!{shutil.which('bash')}\necho 1000\n")
    (bindir / "id").chmod(0o755)
    out = subprocess.run([str(bindir / "bash"), str(SCRIPT)], capture_output=True, text=True,
                         env={"PATH": str(bindir), "HOME": str(tmp_path)}, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "not root; not installing" in out.stdout, out.stdout
