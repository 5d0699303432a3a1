"""CTranslate2 model directories in (faster-whisper's layout): `model.bin` read with numpy, no
ctranslate2 at run time, plus its `config.json` and `tokenizer.json`.

`model.bin` (little-endian): a u32 binary version, the spec's name and a u32 revision, a u32 count of
variables, each a name, a u8 rank, rank x u32 dims, a u8 dtype (0 f32, 1 i8, 2 i16, 3 i32, 4 f16,
5 bf16), a u32 byte count and the bytes, sorted by name; then a u32 count of aliases (name -> target).
Strings are a u16 length that counts a trailing NUL. An int8 weight comes with `<name>_scale`, one
float32 per row: W = q / scale. The variables are renamed to the transformers family's tensor names
(fused projections split), so the family's adapter builds the model as it does from transformers'
files. Whisper (`WhisperSpec`) is the spec read here.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encore.convert.adapter import ConversionError
from encore.convert.registry import ADAPTERS, read_json

MODEL_FILE = "model.bin"
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}  # 5: bf16's bits


def is_ct2_directory(directory: Path) -> bool:
    return (directory / MODEL_FILE).is_file() and not (directory / "model.safetensors").exists()


class _Reader:
    def __init__(self, path: Path):
        import mmap

        with open(path, "rb") as f:  # mapped, not read: arrays view the pages until they are converted
            self.data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
        self.path, self.at = path, 0

    def take(self, n: int, what: str) -> bytes:
        if self.at + n > len(self.data):
            raise ConversionError(
                f"{self.path}: truncated or corrupt ({what} needs {n} bytes at offset {self.at}; the file has "
                f"{len(self.data)})"
            )
        out = memoryview(self.data)[self.at : self.at + n]
        self.at += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        raw = bytes(self.take(n, what))
        try:
            return raw.rstrip(b"\0").decode()
        except UnicodeDecodeError:
            raise ConversionError(f"{self.path}: corrupt ({what} at offset {self.at - n} is not text)") from None


def read_model_bin(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(the spec's name, every variable by name as stored, aliases resolved): arrays that view the
    mapped file, so reading a config from the shapes costs no copy (`float_variables` converts)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    r = _Reader(path)
    (version,) = r.unpack("I", "the binary version")
    if not 1 <= version <= 6:
        raise ConversionError(f"{path}: not a CTranslate2 model.bin (binary version {version}; known 1-6)")
    spec = r.string("the spec name") if version >= 2 else ""
    if version >= 2:
        r.unpack("I", "the spec revision")
    (count,) = r.unpack("I", "the variable count")
    raw: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = r.string("a variable name")
        (rank,) = r.unpack("B", f"{name}'s rank")
        dims = r.unpack("I" * rank, f"{name}'s shape")
        (code,) = r.unpack("B", f"{name}'s dtype")
        if code not in _DTYPES:
            raise ConversionError(f"{path}: variable {name} has an unknown dtype code {code}")
        (nbytes,) = r.unpack("I", f"{name}'s size")
        array = np.frombuffer(r.take(nbytes, f"variable {name}"), dtype=_DTYPES[code])
        if array.size != int(np.prod(dims, dtype=np.int64)):
            raise ConversionError(f"{path}: variable {name} holds {array.size} values for shape {list(dims)}")
        raw[name] = array.reshape(dims)
    aliases = {}
    if r.at + 4 <= len(r.data):
        (n_alias,) = r.unpack("I", "the alias count")
        for _ in range(n_alias):
            alias = r.string("an alias")
            aliases[alias] = r.string(f"{alias}'s target")
    for alias, target in aliases.items():
        if target in raw:
            raw[alias] = raw[target]
    return spec, raw


def float_variables(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The variables as floats: int8 weights dequantized by their `<name>_scale` (W = q / scale, one
    float32 per row; the scales dropped), bfloat16 widened to float32; the others as they are."""
    out: dict[str, np.ndarray] = {}
    for name, array in raw.items():
        if name.endswith("_scale") and name[: -len("_scale")] in raw:
            continue
        if array.dtype == np.uint16:  # bfloat16 (no other code is read as uint16): the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        scale = raw.get(f"{name}_scale")
        if scale is not None:
            array = array.astype(np.float32) / scale.astype(np.float32).reshape(-1, *[1] * (array.ndim - 1))
        out[name] = array
    return out


# --- Whisper ----------------------------------------------------------------------------------------

_LAYER = re.compile(r"(encoder|decoder)/layer_(\d+)/(.*)")
_BLOCKS = {  # CTranslate2's sub-block -> (transformers' attention, its norm)
    "self_attention": ("self_attn", "self_attn_layer_norm"),
    "attention": ("encoder_attn", "encoder_attn_layer_norm"),
    "ffn": (None, "final_layer_norm"),
}


def whisper_tensors(raw: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """CTranslate2's WhisperSpec variables -> transformers' Whisper tensor names (q/k/v split)."""
    out: dict[str, Tensor] = {}
    put = lambda name, array: out.__setitem__(name, torch.from_numpy(np.array(array, dtype=np.float32)))
    for stack in ("encoder", "decoder"):
        put(f"model.{stack}.embed_positions.weight", raw[f"{stack}/position_encodings/encodings"])
        put(f"model.{stack}.layer_norm.weight", raw[f"{stack}/layer_norm/gamma"])
        put(f"model.{stack}.layer_norm.bias", raw[f"{stack}/layer_norm/beta"])
    for conv in ("conv1", "conv2"):
        for kind in ("weight", "bias"):
            put(f"model.encoder.{conv}.{kind}", raw[f"encoder/{conv}/{kind}"])
    put("model.decoder.embed_tokens.weight", raw["decoder/embeddings/weight"])
    for name, array in raw.items():
        match = _LAYER.fullmatch(name)
        if not match:
            continue
        stack, i, rest = match.groups()
        block, _, leaf = rest.partition("/")
        attn, norm = _BLOCKS[block]
        hf = f"model.{stack}.layers.{i}"
        if leaf.startswith("layer_norm/"):
            put(f"{hf}.{norm}.{'weight' if leaf.endswith('gamma') else 'bias'}", array)
            continue
        linear, kind = leaf.split("/")
        for target, piece in _split(block, linear, array):
            put(f"{hf}.{target.format(attn=attn)}.{kind}", piece)
    return out


def _split(block: str, linear: str, array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """One CTranslate2 projection -> the transformers projections it fuses."""
    if block == "ffn":
        return [({"linear_0": "fc1", "linear_1": "fc2"}[linear], array)]
    fused = {
        "self_attention": {"linear_0": ("q_proj", "k_proj", "v_proj"), "linear_1": ("out_proj",)},
        "attention": {"linear_0": ("q_proj",), "linear_1": ("k_proj", "v_proj"), "linear_2": ("out_proj",)},
    }[block][linear]
    pieces = np.split(array, len(fused)) if len(fused) > 1 else [array]
    return [(f"{{attn}}.{part}", piece) for part, piece in zip(fused, pieces)]


def vocabulary(directory: Path) -> dict[str, int]:
    """token -> id from CTranslate2's vocabulary.json (a list) or vocabulary.txt (a token a line), else
    from the directory's tokenizer.json (faster-whisper's directories carry one); {} without any."""
    if (directory / "vocabulary.json").is_file():
        import json

        tokens = json.loads((directory / "vocabulary.json").read_text(encoding="utf-8"))
    elif (directory / "vocabulary.txt").is_file():
        tokens = (directory / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    elif (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab()
    else:
        return {}
    return {token: i for i, token in enumerate(tokens)}


def whisper_config(raw: dict[str, np.ndarray], vocab_ids: dict[str, int]) -> dict[str, Any]:
    """A transformers WhisperConfig dict for the variables' shapes and the vocabulary's special tokens."""
    count = lambda stack: len({m.group(2) for n in raw if (m := _LAYER.fullmatch(n)) and m.group(1) == stack})
    vocab, d = raw["decoder/embeddings/weight"].shape
    ids = vocab_ids.get
    eot = ids("<|endoftext|>")
    sot = ids("<|startoftranscript|>")
    multilingual = vocab >= 51865
    eot = eot if isinstance(eot, int) else (50257 if multilingual else 50256)
    sot = sot if isinstance(sot, int) else eot + 1
    return dict(
        model_type="whisper",
        vocab_size=int(vocab),
        d_model=int(d),
        num_mel_bins=int(raw["encoder/conv1/weight"].shape[1]),
        encoder_layers=count("encoder"),
        decoder_layers=count("decoder"),
        encoder_attention_heads=int(raw["encoder/num_heads"]) if "encoder/num_heads" in raw else int(d) // 64,
        decoder_attention_heads=int(raw["decoder/num_heads"]) if "decoder/num_heads" in raw else int(d) // 64,
        encoder_ffn_dim=int(raw["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(raw["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(raw["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(raw["decoder/position_encodings/encodings"].shape[0]),
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        decoder_start_token_id=sot,
    )


def whisper_generation(directory: Path, hf: dict[str, Any]) -> dict[str, Any]:
    """transformers' generation config keys from faster-whisper's config.json."""
    path = directory / "config.json"
    extra = read_json(path) if path.is_file() else {}
    out: dict[str, Any] = {"is_multilingual": hf["vocab_size"] >= 51865}
    if extra.get("suppress_ids"):
        out["suppress_tokens"] = list(extra["suppress_ids"])
    if extra.get("suppress_ids_begin"):
        out["begin_suppress_tokens"] = list(extra["suppress_ids_begin"])
    if extra.get("alignment_heads"):
        out["alignment_heads"] = [list(pair) for pair in extra["alignment_heads"]]
    return out


def load_ct2(directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, **changes):
    """A CTranslate2 directory (a Whisper model: faster-whisper's) -> the encore model."""
    from encore.convert.checkpoint import fill_model, set_tokenizer, settle_config

    directory = Path(directory)
    raw, hf = _read_whisper(directory)
    tensors = whisper_tensors(float_variables(raw))
    del raw
    adapter = ADAPTERS["whisper"]
    config = adapter.config_from_hf(hf, {})
    get = lambda name: _get(tensors, name, directory)
    config = settle_config(adapter, config, set(tensors), get).replace(**changes)
    model = fill_model(config, adapter.from_hf(get, config), device, dtype, where=str(directory / MODEL_FILE))
    model.generation_config = whisper_generation(directory, hf)
    if (directory / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        set_tokenizer(model, AutoTokenizer.from_pretrained(str(directory)))
    return model.eval()


def ct2_config(directory: Path) -> Any:
    """The encore config of a CTranslate2 directory (from the variables' shapes: no weight is copied)."""
    return ADAPTERS["whisper"].config_from_hf(_read_whisper(directory)[1], {})


def _read_whisper(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(model.bin's variables as stored, the transformers WhisperConfig dict they and the vocabulary
    imply); ConversionError for another spec."""
    spec, raw = read_model_bin(directory / MODEL_FILE)
    if spec != "WhisperSpec":
        raise ConversionError(f"{directory / MODEL_FILE}: spec {spec!r}; encore reads CTranslate2's WhisperSpec")
    return raw, whisper_config(raw, vocabulary(directory))


def _get(tensors: dict[str, Tensor], name: str, directory: Path) -> Tensor:
    if name not in tensors:
        raise ConversionError(f"{directory / MODEL_FILE}: variable for {name!r} is missing")
    return tensors[name]
