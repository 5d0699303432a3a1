import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from encore import DecoderOnly, EncoderDecoder, ModelConfig

os.environ.setdefault("ENCORE_QUIET", "1")
ROOT = Path(__file__).resolve().parents[1]


def _untracked() -> set[str] | None:
    """Files in the work tree that git neither tracks nor ignores (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return {line[3:] for line in out.stdout.splitlines() if line.startswith("??")}


@pytest.fixture(scope="session", autouse=True)
def work_tree_stays_clean():
    """No test or benchmark writes outside its temporary or output directory: the suite leaves the
    work tree without new untracked files."""
    before = _untracked()
    yield
    after = _untracked()
    if before is not None and after is not None:
        new = sorted(after - before)
        assert not new, f"the test suite left files in the work tree: {new[:10]}"


def make_model(arch: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny model with weights spread wide enough that greedy decoding does not just repeat
    one token: the equality tests below then check real, varied rollouts."""
    torch.manual_seed(seed)
    config = ModelConfig.preset(
        f"{arch}-tiny",
        n_encoder_layers=2 if arch == "encdec" else 0,
        n_decoder_layers=2,
        vocab_size=512,
        **{"tie_embeddings": False, **overrides},
    )
    model = (EncoderDecoder if arch == "encdec" else DecoderOnly)(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`encore ARGV` through the CLI's own `main` in this process (a subprocess imports torch again: ~3 s
    a call): (exit code, stdout, stderr); argparse's own errors included."""
    from encore.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def engine_tokens(engine, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy tokens through `engine` (all added at once, EOS ignored), in prompt order."""
    rids = [engine.add(p, max_new_tokens=max_new_tokens, eos_token_id=None) for p in prompts]
    got: dict[int, list[int]] = {r: [] for r in rids}
    while engine.has_work():
        for event in engine.step():
            got[event.request_id].append(event.token)
    return [got[r] for r in rids]


@pytest.fixture(params=["encdec", "deconly"])
def arch(request) -> str:
    return request.param


class SeenOps(TorchDispatchMode):
    """Records the aten / mkldnn / quantized ops that run under it."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))
