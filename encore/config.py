"""Model configuration: one dataclass for both architectures, plus the named presets.

An encoder-decoder has ``n_encoder_layers > 0``; a decoder-only model has ``n_encoder_layers == 0``
and its decoder layers have no cross-attention. Everything else (widths, heads, RoPE, vocabulary,
special tokens) means the same thing for both, so a matched pair differs only in its layer counts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Arch = Literal["encdec", "deconly"]


@dataclass
class ModelConfig:
    arch: Arch = "encdec"
    vocab_size: int = 32128
    d_model: int = 1024
    n_encoder_layers: int = 20
    n_decoder_layers: int = 10
    n_heads: int = 6
    n_kv_heads: int = 3
    head_dim: int = 64
    mlp_dim: int = 4096
    mlp_type: Literal["gelu", "swiglu"] = "gelu"
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    # NTK-aware RoPE scaling: a factor s > 1 stretches the usable context by ~s without training,
    # by raising the base to theta * s^(d/(d-2)) (low frequencies stretch, high ones barely move).
    rope_scaling: float = 1.0
    dropout: float = 0.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    pad_token_id: int = 0
    bos_token_id: int = 1  # the decoder's start token
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"ModelConfig.{field}: {why} (got {getattr(self, field)!r})")

        if self.arch not in ("encdec", "deconly"):
            fail("arch", "must be 'encdec' or 'deconly'")
        if self.mlp_type not in ("gelu", "swiglu"):
            fail("mlp_type", "must be 'gelu' or 'swiglu'")
        for name in (
            "vocab_size",
            "d_model",
            "n_decoder_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "mlp_dim",
            "max_seq_len",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                fail(name, "must be a positive integer")
        if self.arch == "encdec" and self.n_encoder_layers <= 0:
            fail("n_encoder_layers", "an encoder-decoder needs at least one encoder layer")
        if self.arch == "deconly" and self.n_encoder_layers != 0:
            fail("n_encoder_layers", "a decoder-only model has no encoder layers")
        if self.n_heads % self.n_kv_heads:
            fail("n_kv_heads", f"must divide n_heads={self.n_heads}")
        if self.head_dim % 2:
            fail("head_dim", "RoPE needs an even head dimension")
        if self.rope_theta <= 0:
            fail("rope_theta", "must be positive")
        if self.rope_scaling < 1.0:
            fail("rope_scaling", "must be >= 1 (1 disables NTK scaling)")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", "must be in [0, 1)")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                fail(name, f"must be a token id in [0, vocab_size={self.vocab_size})")

    # --- parameter accounting -------------------------------------------------------------------

    def matrix_params(self) -> dict[str, int]:
        """Parameters of the weight matrices, grouped by when generation uses them (the cost model
        prices these): per layer `self_attn` (fused QKV + output), `mlp`; per decoder layer of an
        encoder-decoder `cross_q_out` (query + output, every step) and `cross_kv` (once per request);
        `head` (vocab x d_model)."""
        d, hd = self.d_model, self.head_dim
        encdec = self.arch == "encdec"
        return {
            "self_attn": d * (self.n_heads + 2 * self.n_kv_heads) * hd + self.n_heads * hd * d,
            "cross_q_out": 2 * d * self.n_heads * hd if encdec else 0,
            "cross_kv": d * 2 * self.n_kv_heads * hd if encdec else 0,
            "mlp": (3 if self.mlp_type == "swiglu" else 2) * d * self.mlp_dim,
            "head": self.vocab_size * d,
        }

    def param_counts(self) -> dict[str, int]:
        """Parameters split into embedding / encoder / decoder / total (tied head counted once)."""
        m, norm = self.matrix_params(), self.d_model
        enc_layer = m["self_attn"] + m["mlp"] + 2 * norm
        cross = (m["cross_q_out"] + m["cross_kv"] + norm) if self.arch == "encdec" else 0
        dec_layer = m["self_attn"] + m["mlp"] + 2 * norm + cross
        embedding = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
        encoder = self.n_encoder_layers * enc_layer + (norm if self.n_encoder_layers else 0)
        decoder = self.n_decoder_layers * dec_layer + norm
        return {"embedding": embedding, "encoder": encoder, "decoder": decoder, "total": embedding + encoder + decoder}

    # --- JSON round trip ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_dict(self) -> dict[str, Any]:
        """What config.json holds. `rope_scaling` is written as `rope_ntk_factor`: transformers parses a
        `rope_scaling` key in any config.json (AutoTokenizer reads it too) as a dict and fails on a float."""
        data = self.to_dict()
        data["rope_ntk_factor"] = data.pop("rope_scaling")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        if "rope_ntk_factor" in data:
            data = {**data}
            data["rope_scaling"] = data.pop("rope_ntk_factor")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "encore_version"})
        if unknown:
            raise ValueError(f"{source}: unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no model config here") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # --- presets --------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return sorted(PRESETS)


# The paper's 330M model: d_model 1024, 6 query / 3 KV heads of 64, GELU MLP 4096, 2/3-1/3 split.
_330M = dict(d_model=1024, n_heads=6, n_kv_heads=3, head_dim=64, mlp_dim=4096, vocab_size=32128)
# ~1B: same recipe, wider (d_model 1536, 12 query / 4 KV heads of 128, MLP 6144).
_1B = dict(d_model=1536, n_heads=12, n_kv_heads=4, head_dim=128, mlp_dim=6144, vocab_size=32128)
# A few million parameters: for tests and CPU smoke runs.
_TINY = dict(d_model=256, n_heads=4, n_kv_heads=2, head_dim=64, mlp_dim=1024, vocab_size=8192, max_seq_len=2048)

# Decoder-only layer counts are chosen so the parameter count matches the encoder-decoder of the
# same family within 3% (tests/test_model.py checks it): a decoder-only layer has no cross-attention.
PRESETS: dict[str, dict[str, Any]] = {
    "encdec-330m": dict(_330M, arch="encdec", n_encoder_layers=20, n_decoder_layers=10),
    "encdec-330m-half": dict(_330M, arch="encdec", n_encoder_layers=15, n_decoder_layers=14),
    "encdec-330m-third": dict(_330M, arch="encdec", n_encoder_layers=10, n_decoder_layers=19),
    "deconly-330m": dict(_330M, arch="deconly", n_encoder_layers=0, n_decoder_layers=31),
    "encdec-1b": dict(_1B, arch="encdec", n_encoder_layers=22, n_decoder_layers=11),
    "deconly-1b": dict(_1B, arch="deconly", n_encoder_layers=0, n_decoder_layers=36),
    "encdec-tiny": dict(_TINY, arch="encdec", n_encoder_layers=4, n_decoder_layers=2),
    "deconly-tiny": dict(_TINY, arch="deconly", n_encoder_layers=0, n_decoder_layers=6),
}
