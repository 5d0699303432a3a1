"""whisper.cpp as the speech bench's anchor (`encore bench --model <whisper> --vs-whispercpp`): the same
weights encore runs, written as whisper.cpp's ggml file (`encore.convert.ggml.save_ggml`, cached under
$ENCORE_CACHE/bench), timed on the same 30-s window.

encore's --quantize picks the file's type: none -> F16 (the type whisper.cpp's released files have; its
F32 files run the same graph with fp32 products), int8 -> Q8_0, int4 -> Q4_0; convolutions stay F16 and
norms F32 in each, as whisper.cpp's own quantizer leaves them.

whisper.cpp runs in a process of its own (its OpenMP runtime beside torch's would slow both), through
its C API in the library pywhispercpp ships (`pip install 'encore[whispercpp]'`), called with ctypes:
pywhispercpp's binding of `whisper_decode` takes one token and its `whisper_get_logits` returns one
float, and the bench needs the prompt in one call and the whole row of logits. The window's log-mel
frames are encore's (`whisper_set_mel`), as every row of the bench gets them; then `whisper_encode`,
`whisper_decode` of the prompt (the first token: encoder + prompt), and one `whisper_decode` per token
with <|endoftext|> suppressed and the argmax taken in numpy (exactly --output-len tokens, as encore's
loop). The context is whisper.cpp's default (`whisper_init_from_file`: flash attention on in 1.8).
"""

from __future__ import annotations

import collections
import ctypes
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from encore.config import ModelConfig
from encore.lazy import require

FILE_TYPES = {"none": "F16", "int8": "Q8_0", "int4": "Q4_0"}  # encore's --quantize -> the ggml file's type
_LOG: collections.deque[str] = collections.deque(maxlen=20)  # whisper.cpp's last log lines, for errors
_log_callback = None  # the ctypes callback that fills _LOG, kept alive here


def check_whispercpp(config: ModelConfig | None = None) -> None:
    """A one-line error naming the extra when pywhispercpp is not installed, or what whisper.cpp's graph
    cannot express in `config`."""
    from encore.convert.ggml import why_not_whispercpp

    require("pywhispercpp", "whispercpp")
    why = config and why_not_whispercpp(config)
    if why:
        raise ValueError(f"--vs-whispercpp: whisper.cpp cannot run this model: {why}")


def whispercpp_file(config: ModelConfig, seed: int, checkpoint: Path | None, qtype: str) -> Path:
    """The weights encore runs (the checkpoint as loaded, or the preset's seeded random weights) as a
    whisper.cpp ggml file of `qtype`, cached."""
    from encore.bench.same_weights import _converter_version, cached_directory
    from encore.convert.ggml import save_ggml

    def make(work: Path) -> None:
        import encore
        from encore.model.io import build

        model = build(config, seed=seed) if checkpoint is None else encore.load(checkpoint)
        work.mkdir(parents=True)
        save_ggml(model, work / "ggml-model.bin", qtype=qtype)

    key = [config.to_json_dict(), seed, str(checkpoint), checkpoint and checkpoint.stat().st_mtime, qtype]
    directory = cached_directory("ggml-whisper", [*key, _converter_version()], make)
    return directory / "ggml-model.bin"


def whispercpp_row(
    path: Path, qtype: str, features: np.ndarray, prompt: list[int], eot: int, n: int, repeats: int, threads
) -> dict[str, Any]:
    """A bench row of whisper.cpp on the ggml file at `path`, timed in a spawned process."""
    from encore.bench.speech import _row

    threads = threads or min(4, os.cpu_count() or 1)  # whisper.cpp's own default: up to 4 threads
    with mp.get_context("spawn").Pool(1) as pool:
        first, decode = pool.apply(time_whispercpp, (str(path), features, prompt, eot, n, repeats, threads))
    row = _row("whisper.cpp", qtype, first, decode, n)
    row["threads"] = threads
    return row


def whisper_library() -> ctypes.CDLL:
    """whisper.cpp's C API, from the library pywhispercpp's extension module links (looked up through
    the module: dlsym searches its dependencies), its log kept in `_LOG`."""
    check_whispercpp()
    import _pywhispercpp

    global _log_callback
    lib = ctypes.CDLL(_pywhispercpp.__file__)
    ctx, tokens = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)
    signatures = {
        "whisper_init_from_file": ([ctypes.c_char_p], ctx),
        "whisper_free": ([ctx], None),
        "whisper_set_mel": ([ctx, ctypes.POINTER(ctypes.c_float), ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "whisper_encode": ([ctx, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "whisper_decode": ([ctx, tokens, ctypes.c_int, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "whisper_get_logits": ([ctx], ctypes.POINTER(ctypes.c_float)),
        "whisper_n_vocab": ([ctx], ctypes.c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    if _log_callback is None:
        kind = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
        _log_callback = kind(lambda level, text, data: _LOG.append((text or b"").decode("utf-8", "replace")))
        lib.whisper_log_set(_log_callback, None)
    return lib


class WhisperCpp:
    """One whisper.cpp context on a ggml file: encode a window, decode greedily with a token suppressed."""

    def __init__(self, path: str, threads: int):
        self.lib, self.threads = whisper_library(), threads
        self.ctx = self.lib.whisper_init_from_file(str(path).encode())
        if not self.ctx:
            raise ValueError(f"{path}: whisper.cpp could not load it: {''.join(list(_LOG)[-3:]).strip()}")
        self.n_vocab = self.lib.whisper_n_vocab(self.ctx)

    def close(self) -> None:
        if self.ctx:
            self.lib.whisper_free(self.ctx)
            self.ctx = None

    def encode(self, mel: np.ndarray) -> None:
        """Set the window's log-mel frames [n_mels, n_frames] and run the encoder on them."""
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        pointer = mel.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if self.lib.whisper_set_mel(self.ctx, pointer, mel.shape[1], mel.shape[0]) != 0:
            raise ValueError(f"whisper.cpp refused the log-mel frames: {''.join(list(_LOG)[-2:]).strip()}")
        if self.lib.whisper_encode(self.ctx, 0, self.threads) != 0:
            raise RuntimeError(f"whisper_encode failed: {''.join(list(_LOG)[-2:]).strip()}")

    def decode(self, tokens: list[int], n_past: int) -> np.ndarray:
        """The logits [n_vocab] after `tokens` (a copy), with `n_past` tokens already in the cache."""
        array = (ctypes.c_int32 * len(tokens))(*tokens)
        if self.lib.whisper_decode(self.ctx, array, len(tokens), n_past, self.threads) != 0:
            raise RuntimeError(f"whisper_decode failed: {''.join(list(_LOG)[-2:]).strip()}")
        logits = np.ctypeslib.as_array(self.lib.whisper_get_logits(self.ctx), shape=(len(tokens) * self.n_vocab,))
        return logits[-self.n_vocab :].copy()


def time_whispercpp(path: str, features: np.ndarray, prompt: list[int], eot: int, n: int, repeats: int, threads: int):
    """In a process of its own: (seconds to the first token, seconds for the next `n` tokens) per run,
    after one warm-up run."""
    model = WhisperCpp(path, threads)
    mel = features[0] if features.ndim == 3 else features  # [n_mels, 3000]
    first, decode = [], []
    try:
        for i in range(repeats + 1):  # the first run warms up
            start = time.perf_counter()
            model.encode(mel)
            logits = model.decode(prompt, 0)
            mid = time.perf_counter()
            for k in range(n):
                logits[eot] = -np.inf
                logits = model.decode([int(logits.argmax())], len(prompt) + k)
            if i:
                first.append(mid - start)
                decode.append(time.perf_counter() - mid)
    finally:
        model.close()
    return first, decode
