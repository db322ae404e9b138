"""Run untrusted generated Python (HumanEval / MBPP programs) in a limited subprocess.

Each program runs in a fresh interpreter (``python -I``: no user site-packages, no PYTHON*
environment variables) inside its own temporary directory, in a new session so that a timeout
kills the whole process group, under resource limits set by a prelude in the child itself
(address space, CPU seconds, file size, no core dumps) and with the commonest destructive
functions of ``os``/``shutil``/``subprocess`` disabled.  That is protection against accidents,
not a security boundary against hostile code: run evaluations in a throwaway container too.

A program passes when it exits with status 0 *and* prints a per-run random token after its last
line, so a completion that calls ``exit(0)`` before the tests run does not pass.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout"]

#: Limits are applied in the child (not through ``preexec_fn``, which is unsafe when the parent
#: runs several sandboxes from threads).
_PRELUDE = """\
import resource as _r
def _lim(what, soft):
    try:
        hard = _r.getrlimit(what)[1]
        _r.setrlimit(what, (soft if hard == _r.RLIM_INFINITY else min(soft, hard), hard))
    except (ValueError, OSError):
        pass
_lim(_r.RLIMIT_AS, {memory})
_lim(_r.RLIMIT_CPU, {cpu})
_lim(_r.RLIMIT_FSIZE, {fsize})
_lim(_r.RLIMIT_CORE, 0)
del _r, _lim
def _guard():
    import os, shutil, subprocess
    def _denied(*a, **k):
        raise PermissionError("disabled in the dllm_core evaluation sandbox")
    for mod, names in ((os, ("kill", "killpg", "system", "fork", "forkpty", "remove", "unlink", "rmdir",
                             "removedirs", "rename", "renames", "replace", "truncate", "putenv", "chmod",
                             "chown", "setuid", "execv", "execve", "execvp", "spawnv")),
                       (shutil, ("rmtree", "move", "chown")), (subprocess, ("Popen", "run", "call"))):
        for n in names:
            if hasattr(mod, n):
                setattr(mod, n, _denied)
_guard()
del _guard
"""


@dataclass
class SandboxResult:
    """Outcome of one program."""

    status: Status
    returncode: int | None
    seconds: float
    output: str  #: the tail of stdout and stderr (for diagnosing failures)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 2048, python: str | None = None
                ) -> SandboxResult:
    """Run ``program`` and report whether it completed without error within ``timeout`` seconds."""
    token = secrets.token_hex(16)
    cpu = int(timeout) + 1  # the CPU limit backs up the wall-clock one for busy loops
    prelude = _PRELUDE.format(memory=memory_mb * 1024 * 1024, cpu=cpu, fsize=16 * 1024 * 1024)
    source = f"{prelude}\n{program}\n\nprint({token!r})\n"
    with tempfile.TemporaryDirectory(prefix="dllm-sandbox-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(source, encoding="utf-8")
        log_path = Path(tmp) / "output.txt"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        # Output goes to a file (capped by RLIMIT_FSIZE), not a pipe, so a print loop cannot
        # fill the parent's memory before the timeout hits.
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([python or sys.executable, "-I", "-B", str(path)], cwd=tmp, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc: int | None = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc, timed_out = None, True
        seconds = time.perf_counter() - t0
        output = _tail(log_path)
    if timed_out:
        return SandboxResult("timeout", rc, seconds, output)
    ok = rc == 0 and token in output
    return SandboxResult("passed" if ok else "failed", rc, seconds, output.replace(token, "").strip())


def run_programs(programs: Sequence[str], timeout: float = 10.0, memory_mb: int = 2048,
                 workers: int | None = None) -> list[SandboxResult]:
    """:func:`run_program` over many programs, a few at a time (each is its own process)."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, timeout, memory_mb), programs))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's own process group (it leads a new session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        proc.kill()


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")
