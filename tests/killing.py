"""Crash tests' helper: a process that runs a save job in forked children and kills them with
SIGKILL at chosen times, so that a test can check what a kill at that point leaves on disk.

``Killer("module:setup", **kwargs)`` starts ``python tests/killing.py`` (with this tree's ``src``
and ``tests`` on its path, one torch thread), which imports ``module`` (``recipes/test_ask``: a
module of a folder under ``tests``), calls ``setup(**kwargs)``
once (imports, models, memories: the slow part) and gets the jobs, a dict of callables each doing
one save (they may return a dict of ``time.perf_counter()`` marks). Then each
``killer.run(seconds, job, **kwargs)`` forks a child running ``jobs[job](**kwargs)`` and kills it ``seconds`` after
the fork (``None``: lets it finish and returns its marks, relative to the fork). A fork costs
milliseconds: nothing is imported again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


class Killer:
    def __init__(self, target: str, **kwargs):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), target, json.dumps(kwargs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = self._answer()
        assert ready == {"ready": True}, ready

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the killing helper exited ({self.proc.wait()}); its stderr is above")
        return json.loads(line)

    def run(self, seconds: float | None, job: str, **kwargs) -> dict:
        """``{"killed": bool, "marks": {...}}``: whether the child died of the kill (else it finished)."""
        self.proc.stdin.write(
            json.dumps({"seconds": -1 if seconds is None else seconds, "job": job, "kwargs": kwargs}) + "\n"
        )
        self.proc.stdin.flush()
        answer = self._answer()
        if "error" in answer:
            raise AssertionError(f"the save job failed:\n{answer['error']}")
        return answer

    def __enter__(self):
        return self

    def close(self) -> None:
        self.proc.stdin.close()  # the helper then leaves at once (os._exit)
        self.proc.wait(timeout=30)

    def __exit__(self, *exc):
        self.close()


def _serve(target: str, kwargs: dict) -> None:
    import importlib

    import torch

    torch.set_num_threads(1)
    module, func = target.split(":")
    folder, _, module = module.rpartition("/")
    if folder:
        sys.path.insert(0, str(HERE / folder))
    jobs = getattr(importlib.import_module(module), func)(**kwargs)
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        seconds, job = float(order["seconds"]), partial(jobs[order["job"]], **order["kwargs"])
        read, write = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: quiet, runs the job, reports its marks, leaves at once
            os.close(read)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = 0
            try:
                marks = {k: v - t0 for k, v in (job() or {}).items()}
            except BaseException:
                import traceback

                marks, code = {"error": traceback.format_exc()}, 1
            os.write(write, json.dumps(marks).encode())
            os._exit(code)
        os.close(write)
        if seconds >= 0:
            time.sleep(seconds)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as f:
            report = f.read()
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if not killed and os.waitstatus_to_exitcode(status) != 0:
            error = json.loads(report).get("error") if report else f"exit {os.waitstatus_to_exitcode(status)}"
            print(json.dumps({"killed": False, "error": error}), file=out, flush=True)
            continue
        print(
            json.dumps({"killed": killed, "marks": json.loads(report) if report and not killed else {}}),
            file=out,
            flush=True,
        )


if __name__ == "__main__":
    _serve(sys.argv[1], json.loads(sys.argv[2]))
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown (seconds with torch loaded)
