"""visionzoo.runtime: the malloc setting the visionzoo command makes at start-up."""

import platform
import subprocess
import sys

import pytest

import visionzoo.runtime as runtime
from processes import child_env
from visionzoo.cli import command, main

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# In a fresh process: allocate, fill and free a 96 MiB tensor six times, and print the median
# of the minor page faults of the last five. glibc maps a block that large afresh on every
# call (its adaptive threshold stops at 32 MiB), so each fill faults on ~24k pages. Retained,
# a fill now and then still lands on new memory (a small block allocated behind the freed
# one keeps it from merging back), hence the median.
_FAULTS = """
import resource, statistics, sys, torch
import visionzoo.runtime as runtime
if sys.argv[1] == "retain":
    assert runtime.retain_freed_memory()
torch.empty(24 << 20).fill_(1)
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(24 << 20).fill_(1)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(statistics.median(faults)))
"""


def _faults_per_fill(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env=child_env(), capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@glibc
def test_retained_memory_is_reused_without_page_faults():
    pages = (96 << 20) // 4096
    assert _faults_per_fill("default") > pages // 2  # mapped afresh each time
    assert _faults_per_fill("retain") < pages // 50  # the same heap memory again


def test_the_command_retains_memory_unless_told_not_to(monkeypatch, capsys):
    """The program does; main() called from a program (or this test process) does not."""
    calls = []
    monkeypatch.setattr(runtime, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "argv", ["visionzoo", "list", "resnet18"])
    monkeypatch.delenv(runtime.MALLOC_ENV, raising=False)
    assert main(["list", "resnet18"]) == 0 and calls == []
    assert command() == 0 and calls == [1]
    monkeypatch.setenv(runtime.MALLOC_ENV, "default")
    assert command() == 0 and calls == [1]
    assert "resnet18" in capsys.readouterr().out


def test_a_bad_setting_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["visionzoo", "list", "resnet18"])
    monkeypatch.setenv(runtime.MALLOC_ENV, "jemalloc")
    assert command() == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().count("\n") == 0
    assert "VISIONZOO_MALLOC must be 'retain' or 'default', got 'jemalloc'" in captured.err


@glibc
def test_the_installed_command_says_what_it_set(tmp_path):
    """`python -m visionzoo bench` in a child process: its header names the malloc setting (read
    as it is printed; the child is stopped there, before its GEMM probe and timing)."""
    args = [sys.executable, "-m", "visionzoo", "bench", "resnet18", "--device", "cpu", "--batch-size", "1", "--img-size", "32",
            "--rounds", "1", "--iters", "1", "--warmup", "0"]

    def malloc_line(env):
        with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
            try:
                return next((line for line in proc.stdout if line.startswith("malloc:")), None)
            finally:
                proc.kill()

    assert malloc_line({**child_env(), "PYTHONUNBUFFERED": "1"}).startswith("malloc: freed memory kept for reuse (blocks up to 256 MiB, up to 1024 MiB free")
    assert malloc_line({**child_env(), "PYTHONUNBUFFERED": "1", runtime.MALLOC_ENV: "default"}).startswith("malloc: left as the process had it")


@pytest.mark.parametrize("kwargs", [{"block": 0}, {"keep": 1 << 31}])
def test_sizes_out_of_range_are_refused(kwargs):
    with pytest.raises(ValueError, match="between 1 and 2\\*\\*31 - 1 bytes"):
        runtime.retain_freed_memory(**kwargs)


def test_retains_names_the_blocks_that_stay(monkeypatch):
    monkeypatch.setattr(runtime, "_retained", [])
    assert runtime.memory_retained() is None and not runtime.retains(1)
    monkeypatch.setattr(runtime, "_retained", [(100, 1000)])
    assert runtime.retains(100) and not runtime.retains(101)  # larger blocks are still mapped afresh
    monkeypatch.setattr(runtime, "_retained", [(1000, 100)])
    assert runtime.retains(100) and not runtime.retains(101)  # nor kept when more than `keep` is free
