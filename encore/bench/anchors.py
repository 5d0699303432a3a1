"""Anchors: the libraries a user would otherwise reach for, running models of the same shapes as
encore's, timed beside them in the same run.

- `HFBackend` (`--vs-hf`): Hugging Face transformers T5 / Llama, its own `generate` and KV cache.
- `CT2Backend` (`--vs-ct2`): CTranslate2 (the fastest CPU runtime for T5-style encoder-decoders), a T5
  of the encoder-decoder's shape converted from Hugging Face, fp32 or int8 (`compute_type`).

For encore's own models, anchors have random weights (seeded), like the encore models they mirror:
speed does not depend on the values. They copy the shapes, not encore's design choices: T5 has no
grouped K/V and uses relative position buckets instead of RoPE. For a model of a transformers family
(T5Gemma, SmolLM2, Qwen, Gemma 3: a checkpoint or a preset of a released shape) both anchors run the
same weights through the family's own transformers class and CTranslate2's own converter
(`encore.bench.same_weights`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from encore.bench.backends import BackendSpec, Timing, bench_config, quantized_label, sync
from encore.bench.costmodel import dtype_bytes, kv_cache_bytes
from encore.bench.same_weights import cached_directory, ct2_directory, ct2_vocabulary, hf_model, imported
from encore.config import ModelConfig


def hf_t5_config(config: ModelConfig):
    """A T5 of the encoder-decoder's shape: same widths and layer counts; T5 has no GQA (every head
    has its own K/V) and relative position buckets instead of RoPE."""
    from transformers import T5Config

    return T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.head_dim,
        d_ff=config.mlp_dim,
        num_layers=config.n_encoder_layers,
        num_decoder_layers=config.n_decoder_layers,
        num_heads=config.n_heads,
        feed_forward_proj="gelu_new" if config.mlp_type == "gelu" else "gated-silu",
        dropout_rate=0.0,
        layer_norm_epsilon=config.norm_eps,
        tie_word_embeddings=True,
        use_cache=True,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.bos_token_id,
    )


def hf_llama_intermediate(config: ModelConfig) -> int:
    """Llama's MLP is SwiGLU (3 matrices): 2/3 of a 2-matrix GELU MLP's width keeps the parameters."""
    return config.mlp_dim if config.mlp_type == "swiglu" else round(2 * config.mlp_dim / 3)


def hf_llama_config(config: ModelConfig):
    from transformers import LlamaConfig

    class _LlamaConfig(LlamaConfig):
        # transformers 5 insists on hidden_size % num_attention_heads == 0, although the model uses
        # the explicit head_dim; our 330M shape (1024 wide, 6 heads of 64) fails that check only.
        def validate_architecture(self) -> None:
            pass

    return _LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=hf_llama_intermediate(config),
        num_hidden_layers=config.n_decoder_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        use_cache=True,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


class _TokenClock:
    """A transformers streamer that only timestamps: the first put() is the prompt (decoder-only) or
    the decoder start token (T5), every later put() one generated token per row (already on the host,
    so CUDA work up to it is done)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class HFBackend:
    """Hugging Face T5 (encoder-decoder) or Llama (decoder-only) with the encore model's shape, random
    weights, its own `generate` with its KV cache (a static batch)."""

    name, sweep, kernel = "transformers", False, "aten"

    def __init__(self, spec: BackendSpec):
        self.device, self.dtype, self.seed = torch.device(spec.device), getattr(torch, spec.dtype), spec.seed
        mirror, config, self.checkpoint = bench_config(spec.model, spec.max_len)
        self.config, self.arch, self.mirror = config, config.arch, mirror
        if imported(config):  # the same weights through the family's own transformers class
            self.hf_name, self.cost_config = f"hf-{config.family}", config
        elif config.arch == "encdec":
            self.hf_name = "hf-t5"
            self.cost_config = config.replace(n_kv_heads=config.n_heads)  # T5: no grouped K/V
        else:
            self.hf_name = "hf-llama"
            self.cost_config = config.replace(mlp_type="swiglu", mlp_dim=hf_llama_intermediate(config))
        self.label = f"{self.hf_name} ({mirror})"
        self.weight_bytes = self.dtype.itemsize
        self.num_beams = spec.num_beams
        if self.num_beams > 1:
            self.name += f"-beam{self.num_beams}"

    def build(self) -> Any:
        from transformers import LlamaForCausalLM, T5ForConditionalGeneration

        if imported(self.config):
            return hf_model(self.config, self.seed, self.checkpoint, self.device, self.dtype)
        encdec = self.arch == "encdec"
        cls = T5ForConditionalGeneration if encdec else LlamaForCausalLM
        hf_config = hf_t5_config(self.config) if encdec else hf_llama_config(self.config)
        torch.manual_seed(self.seed)
        with torch.device(self.device):
            model = cls(hf_config)
        return model.to(dtype=self.dtype).eval()

    def params(self, model: Any) -> int:
        return sum(p.numel() for p in model.parameters())

    def timed_generate(self, model: Any, ids: torch.Tensor, n: int, capacity: int) -> Timing:
        from transformers import GenerationConfig
        from transformers.generation.streamers import BaseStreamer

        c = self.config
        gen = GenerationConfig(
            max_new_tokens=n,
            min_new_tokens=n,  # EOS is suppressed until n tokens: exactly n, as our eos_token_id=None
            do_sample=False,
            num_beams=self.num_beams,
            use_cache=True,
            pad_token_id=c.pad_token_id,
            eos_token_id=c.eos_token_id,
            decoder_start_token_id=c.bos_token_id,
        )
        clock = type("TokenClock", (_TokenClock, BaseStreamer), {})()
        streamer = clock if self.num_beams == 1 else None  # transformers streams no beam search
        mask = torch.ones_like(ids)
        sync(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=gen, streamer=streamer)
        sync(self.device)
        t_end = time.perf_counter()
        if self.num_beams > 1:
            return Timing(t0, None, t_end, n, [])
        tokens = clock.times[1:]  # times[0]: the prompt / start token
        intervals = [b - a for a, b in zip(tokens, tokens[1:])]
        return Timing(t0, tokens[0] if tokens else t_end, tokens[-1] if tokens else t_end, len(tokens), intervals)

    def kv_cache_bytes(self, model: Any, batch: int, input_len: int, output_len: int) -> int:
        # HF grows its cache step by step; at the end it holds what the cost model counts (beams: a row
        # each, the encoder's output expanded to them as transformers expands it)
        rows = batch * self.num_beams
        return kv_cache_bytes(self.cost_config, rows, input_len, output_len, dtype_bytes(self.dtype))


# --- CTranslate2 --------------------------------------------------------------------------------------


def _ct2_tokenizer(directory: Path) -> None:
    """A tokenizer with T5's special tokens only: CTranslate2's converter names the remaining ids
    <extra_id_N> itself, and the bench feeds token strings, never text."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.save_pretrained(str(directory))


def ct2_model_dir(config: ModelConfig, seed: int) -> Path:
    """A CTranslate2 (fp32) conversion of a seeded random T5 of `config`'s shape, cached under
    $ENCORE_CACHE/bench so that later runs skip the conversion (~1 min and 2x the weights on disk)."""
    import ctranslate2
    from transformers import T5ForConditionalGeneration

    t5 = hf_t5_config(config)

    def make(work: Path) -> None:
        hf = work.with_name(work.name + ".hf")
        shutil.rmtree(hf, ignore_errors=True)
        torch.manual_seed(seed)
        T5ForConditionalGeneration(t5).save_pretrained(str(hf))
        _ct2_tokenizer(hf)
        ctranslate2.converters.TransformersConverter(str(hf)).convert(str(work), force=True)
        shutil.rmtree(hf, ignore_errors=True)

    # workers building the fp32 and the int8 anchor convert once
    return cached_directory("ct2-t5", [t5.to_dict(), seed, ctranslate2.__version__], make)


class CT2Backend:
    """CTranslate2 running a T5 of the encoder-decoder's shape: fp32, or int8 weights (`compute_type
    "int8"`, quantized at load). Greedy `translate_batch` forced to exactly n tokens, a callback
    timestamping each generated token."""

    sweep, kernel = False, "aten"

    def __init__(self, spec: BackendSpec):
        label, config, self.checkpoint = bench_config(spec.model, spec.max_len)
        if config.arch != "encdec" and not imported(config):
            raise ValueError(f"--vs-ct2 times a T5 of an encoder-decoder's shape; {label} is decoder-only")
        self.config, self.arch, self.seed = config, config.arch, spec.seed
        self.compute_type = "int8" if spec.quantize == "int8" else "float32"
        self.mirror = quantized_label(label, spec.quantize)
        self.kernel = "int8" if spec.quantize == "int8" else "onednn"
        family = config.family if imported(config) else "t5"
        self.label = f"ct2-{family} {self.compute_type} ({label})"
        self.name = "ctranslate2" + ("-int8" if spec.quantize == "int8" else "")
        # T5 has no grouped K/V; an imported family's conversion has the model's own shapes
        self.cost_config = config if imported(config) else config.replace(n_kv_heads=config.n_heads)
        self.weight_bytes = 1 if spec.quantize == "int8" else 4
        if spec.device != "cpu":
            raise ValueError("--vs-ct2 runs on the CPU")
        self.num_beams = spec.num_beams
        if self.num_beams > 1:
            self.name += f"-beam{self.num_beams}"
            if self.arch != "encdec":
                raise ValueError(f"--num-beams with --vs-ct2 times translate_batch: {label} is decoder-only")

    def build(self) -> Any:
        import ctranslate2

        if imported(self.config):
            path = ct2_directory(self.config, self.seed, self.checkpoint)
            vocab = ct2_vocabulary(path)
        else:
            path = ct2_model_dir(self.config, self.seed)
            vocab = json.loads((path / "shared_vocabulary.json").read_text())
        runner = ctranslate2.Translator if self.arch == "encdec" else ctranslate2.Generator
        threads = dict(inter_threads=1, intra_threads=torch.get_num_threads())
        return runner(str(path), device="cpu", compute_type=self.compute_type, **threads), vocab

    def params(self, model: Any) -> int:
        from transformers import T5ForConditionalGeneration

        if imported(self.config):
            return self.config.param_counts()["total"]
        with torch.device("meta"):
            return sum(p.numel() for p in T5ForConditionalGeneration(hf_t5_config(self.config)).parameters())

    def timed_generate(self, model: Any, ids: torch.Tensor, n: int, capacity: int) -> Timing:
        translator, vocab = model
        source = [[vocab[i] for i in row] for row in ids.tolist()]
        stamps: dict[int, float] = {}  # decoding step -> when its last token came

        def on_token(step) -> bool:
            stamps[step.step] = time.perf_counter()
            return False

        t0 = time.perf_counter()
        if self.arch == "encdec":
            translator.translate_batch(
                source,
                beam_size=self.num_beams,
                max_decoding_length=n,
                min_decoding_length=n,  # EOS is masked until n tokens: exactly n, like encore's eos_token_id=None
                max_input_length=0,
                max_batch_size=len(source),
                callback=on_token if self.num_beams == 1 else None,  # CTranslate2 calls back at beam 1 only
            )
            if self.num_beams > 1:
                return Timing(t0, None, time.perf_counter(), n, [])
        else:  # a decoder-only family: the prompt, then n new tokens
            translator.generate_batch(
                source,
                max_length=n,
                min_length=n,
                sampling_topk=1,
                include_prompt_in_result=False,
                max_batch_size=len(source),
                callback=on_token,
            )
        t_end = time.perf_counter()
        marks = [stamps[s] for s in sorted(stamps)]
        intervals = [b - a for a, b in zip(marks, marks[1:])]
        return Timing(t0, marks[0] if marks else t_end, marks[-1] if marks else t_end, len(marks), intervals)

    def kv_cache_bytes(self, model: Any, batch: int, input_len: int, output_len: int) -> int:
        # beams: a row each (CTranslate2 tiles the encoder's output across a batch's beams)
        return kv_cache_bytes(self.cost_config, batch * self.num_beams, input_len, output_len, 4)
