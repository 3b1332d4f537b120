"""``distributedcharge.sim.die_with_parent``: a simulator killed with -9 leaves no child running."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from distributedcharge.sim import die_with_parent


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has already died


def test_the_child_dies_when_its_parent_is_killed():
    simulator = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-m", "distributedcharge.sim.die_with_parent",
                                  str(os.getpid()), "sleep", "60"])
        print(child.pid, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(simulator.stdout.readline())
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep"):
            assert time.monotonic() < deadline, "the child never became its command"
            time.sleep(0.02)
        simulator.kill()
        simulator.wait(5)
        deadline = time.monotonic() + 5
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _running(child)
    finally:
        simulator.kill()
        simulator.wait(5)


def test_a_parent_already_gone_means_the_command_never_starts(tmp_path):
    marker = tmp_path / "started"
    not_my_parent = "1"
    status = subprocess.run([sys.executable, "-m", "distributedcharge.sim.die_with_parent", not_my_parent,
                             "touch", str(marker)], capture_output=True, text=True, timeout=30)
    assert status.returncode == 1 and "is gone" in status.stderr
    assert not marker.exists()


def test_usage_errors_exit_2(capsys):
    assert die_with_parent.main([]) == 2
    assert die_with_parent.main(["not-a-pid", "true"]) == 2
    assert "usage" in capsys.readouterr().err
