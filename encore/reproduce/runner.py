"""Experiments of `encore reproduce`: each one an `encore` command (the CLI's own `main`, run in this
process: the code paths users run) or a small in-process measurement, run once and remembered.

    runs/<name>/            the command's --out (training: checkpoints, final/, metrics.jsonl)
    runs/<name>.log         its stdout and stderr
    runs/<name>.done.json   written when it succeeded: the command, seconds, its result

A finished experiment (its .done.json exists) is never run again. A killed training command is
continued (`--resume=auto` when it saved a checkpoint, `--overwrite` of its partial files otherwise),
so running the same `encore reproduce` again picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encore.files import atomic_write


def _encore(argv: list[str], log_path: Path) -> int:
    """Run `encore ARGV` in this process (the CLI's own `main`, as a user's shell would), its output
    appended to `log_path`; returns the exit code."""
    from encore.cli import main

    quiet = os.environ.get("ENCORE_QUIET")
    os.environ["ENCORE_QUIET"] = "1"
    try:
        with open(log_path, "a") as log, redirect_stdout(log), redirect_stderr(log):
            print(f"$ encore {shlex.join(argv)}", flush=True)
            return main(argv)
    finally:
        if quiet is None:
            os.environ.pop("ENCORE_QUIET", None)
        else:
            os.environ["ENCORE_QUIET"] = quiet


class ExperimentFailed(RuntimeError):
    """An experiment's command failed; the message names it and its log."""


@dataclass
class Experiment:
    name: str
    argv: list[str] | None = None  # an `encore` command line (without "encore")
    fn: Callable[[Path], dict[str, Any]] | None = None  # in-process: (its folder) -> result
    trains: bool = False  # a training command whose --out is runs/<name>
    label: str = ""  # what the report shows for an in-process experiment

    @property
    def command(self) -> str:
        return "encore " + shlex.join(self.argv) if self.argv is not None else self.label


class Runner:
    def __init__(self, root: Path, log: Callable[[str], None] = print):
        self.root, self.runs, self.log = root, root / "runs", log
        self.runs.mkdir(parents=True, exist_ok=True)
        self.done_records: list[dict[str, Any]] = []

    def out(self, name: str) -> Path:
        return self.runs / name

    def _done_path(self, name: str) -> Path:
        return self.runs / f"{name}.done.json"

    def run(self, exp: Experiment) -> dict[str, Any]:
        """The experiment's record ({"name", "command", "seconds", "result"}), running it if it has not run."""
        done = self._done_path(exp.name)
        if done.is_file():
            record = json.loads(done.read_text())
            self.log(f"[done] {exp.name} ({record['seconds']:.0f} s earlier)")
        else:
            self.log(f"[run ] {exp.name}: {exp.command}")
            start = time.perf_counter()
            result = self._execute(exp)
            record = {
                "name": exp.name,
                "command": exp.command,
                "seconds": time.perf_counter() - start,
                "result": result,
            }
            text = json.dumps(record, indent=2) + "\n"
            atomic_write(done, lambda p: Path(p).write_text(text))
        self.done_records.append(record)
        return record

    def _execute(self, exp: Experiment) -> dict[str, Any]:
        if exp.fn is not None:
            self.out(exp.name).mkdir(parents=True, exist_ok=True)
            return exp.fn(self.out(exp.name))
        argv = list(exp.argv or [])
        out = self.out(exp.name)
        if exp.trains and out.exists():
            argv.append("--resume=auto" if (out / "checkpoints").is_dir() else "--overwrite")
        log_path = self.runs / f"{exp.name}.log"
        code = _encore(argv, log_path)
        if code in (130, 143):
            raise KeyboardInterrupt
        if code != 0:
            tail = log_path.read_text().strip().splitlines()[-1:] or ["(empty log)"]
            raise ExperimentFailed(f"experiment {exp.name} failed (exit {code}): {tail[0][:300]} (log: {log_path})")
        return {}
