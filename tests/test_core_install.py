"""encore as a user installs it without extras: a fresh virtual environment holding encore's wheel and
its core dependencies alone (the closure of pyproject.toml's `dependencies`, linked from this
environment: no download, no extra importable). The README's Python quick start and the core commands
(`generate`, `convert`, `chat`) run; a command that needs an extra says which in one line, without a
traceback (#42)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from test_docs import python_blocks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# run inside the fresh environment: each command through encore's own entry point, its exit code and
# the last lines it printed (a traceback would show there)
DRIVER = r"""
import contextlib, io, json, sys, traceback
import torch
import encore
from encore.cli import main

from encore.tokenizer import special_ids, train_tokenizer

work = sys.argv[1]
words = "def add return value list file open read write the a of".split()
tokenizer = train_tokenizer([" ".join(words[(i + j) % len(words)] for j in range(9)) for i in range(60)], 400)
tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
pad, bos, eos = special_ids(tokenizer)
config = encore.ModelConfig.preset("encdec-tiny", vocab_size=400, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
model = encore.EncoderDecoder(config)
model.tokenizer = tokenizer
model.save_pretrained(f"{work}/ckpt")
commands = {
    "version": ["--version"],
    "generate": ["generate", "--model", f"{work}/ckpt", "--input", "def add(a, b):", "--max-new-tokens", "4"],
    "convert": ["convert", "--model", f"{work}/ckpt", "--out", f"{work}/int8", "--quantize", "int8"],
    "chat": ["chat", "--model", f"{work}/ckpt", "--max-new-tokens", "4"],
    "serve": ["serve", "--model", f"{work}/ckpt"],
    "export": ["export", "--model", f"{work}/ckpt", "--format", "onnx", "--out", f"{work}/onnx"],
    "bench": ["bench", "--model", "encdec-tiny", "--baseline", "none", "--no-sweep", "--repeats", "1"],
}
results = {}
for name, argv in commands.items():
    out, err = io.StringIO(), io.StringIO()
    sys.stdin = io.StringIO("hello\n")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            code, err = "traceback", io.StringIO(traceback.format_exc())
    results[name] = [code, out.getvalue()[-400:], err.getvalue()[-1500:]]
quick_start = open(f"{work}/quick_start.py").read()  # the README's Python quick start, as written
exec(compile(quick_start, "README.md", "exec"), {"__name__": "__quick_start__"})
print("RESULTS" + json.dumps(results))
"""


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_closure() -> set[str]:
    """The distributions encore's core needs, transitively (markers of this Python, no extras)."""
    seen: set[str] = set()
    todo = [req for req in md.requires("encore") or [] if "extra ==" not in req]
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        if _name(dist.metadata["Name"]) in seen:
            continue
        seen.add(_name(dist.metadata["Name"]))
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return seen


def link_site(names: set[str], site: Path) -> None:
    """Symlink each distribution's top-level files (packages, modules, .dist-info) into `site`."""
    here = Path(sysconfig.get_paths()["purelib"])
    site.mkdir()
    for dist in md.distributions():
        if _name(dist.metadata["Name"]) not in names:
            continue
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = here / top
            if top not in ("..", "__pycache__") and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)


def test_the_core_install_runs_the_core_commands_and_names_each_missing_extra(tmp_path):
    if not any(_name(d.metadata["Name"]) == "encore" for d in md.distributions()):
        pytest.skip("encore is not installed in this environment (pip install -e .)")
    names = core_closure()
    assert {"torch", "transformers", "tokenizers"} <= names and not names & {"fastapi", "uvicorn", "onnx", "av"}
    link_site(names, tmp_path / "core")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "core.pth").write_text(str(tmp_path / "core") + "\n")
    wheels = tmp_path / "wheel"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("encore-*.whl")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", purelib, str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    (tmp_path / "quick_start.py").write_text("\n".join(python_blocks(ROOT / "README.md")))
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment.update(ENCORE_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    done = subprocess.run(
        [str(python), "-c", DRIVER, str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env=environment,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS", 1)[1])
    for name in ("version", "generate", "convert", "chat"):
        code, out, err = results[name]
        assert code in (0, None), f"encore {name}: {code}\n{out}\n{err}"
    for name, extra in (("serve", "serve"), ("export", "onnx"), ("bench", "bench")):
        code, out, err = results[name]
        assert code not in (0, None, "traceback") and "Traceback" not in err, f"encore {name}: {code}\n{err}"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"encore[{extra}]" in lines[0], f"encore {name}: {err}"
