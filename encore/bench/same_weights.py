"""The anchors of an imported family (T5Gemma, Llama / SmolLM2, Qwen, Gemma 3) run *the same weights*
encore runs, not a look-alike: a transformers checkpoint directory of the model (the user's own, or the
seeded random model of a preset saved in its family's layout), timed by transformers' `generate`
(`--vs-hf`) and converted by CTranslate2's own converter (`--vs-ct2`).
"""

from __future__ import annotations

import fcntl  # POSIX: the anchors run on Linux / macOS
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from encore.config import ModelConfig
from encore.files import cache_dir


def imported(config: ModelConfig) -> bool:
    """A model of a transformers family: its anchors run the same weights."""
    return config.family != "encore"


def cached_directory(name: str, key: object, make: Callable[[Path], None]) -> Path:
    """A directory under $ENCORE_CACHE/bench built once by `make(tmp)` and renamed into place when
    complete (workers share it, under a lock): converted anchors, keyed by what made them."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    target = cache_dir() / "bench" / f"{name}-{digest}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            work = target.with_name(target.name + ".tmp")
            shutil.rmtree(work, ignore_errors=True)
            make(work)
            work.rename(target)
    return target


def hf_directory(config: ModelConfig, seed: int, checkpoint: Path | None) -> Path:
    """A transformers directory of the weights the encore backend runs: a transformers checkpoint as
    it is; an encore checkpoint or a preset (seeded, as `encore.model.build` makes it) written in its
    family's layout, with a word-level tokenizer of the vocabulary's size (CTranslate2's converter
    builds its vocabulary from a tokenizer; the bench feeds token strings, never text)."""
    from encore.convert import load
    from encore.convert.checkpoint import is_hf_checkpoint
    from encore.model.io import build

    if checkpoint is not None and is_hf_checkpoint(checkpoint):
        return checkpoint

    def make(work: Path) -> None:
        model = build(config, seed=seed) if checkpoint is None else load(checkpoint)
        if model.config.family == "t5gemma2":
            _save_with_default_tower(model, work)
        else:
            model.save_pretrained(work, format="hf")
        if model.tokenizer is None:
            _word_tokenizer(model.config).save_pretrained(str(work))

    writer = _converter_version()  # a changed adapter writes another directory, never a stale one
    key = [config.to_json_dict(), seed, str(checkpoint), checkpoint and checkpoint.stat().st_mtime, writer]
    return cached_directory(f"hf-{config.family}", key, make)


def _converter_version() -> str:
    """A digest of encore's conversion code (`encore/convert/*.py`), which writes the anchors' files."""
    import encore.convert

    digest = hashlib.sha256()
    for path in sorted(Path(encore.convert.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _save_with_default_tower(model, directory: Path) -> None:
    """T5Gemma 2, which encore loads as text only: transformers' class with the text weights encore
    runs and its default vision tower, randomly initialised (the bench times text; users get a
    refusal from `save_pretrained(format="hf")` rather than a tower they did not have)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from encore.convert import ADAPTERS

    adapter, config = ADAPTERS["t5gemma2"], model.config
    hf = AutoModelForSeq2SeqLM.from_config(adapter.config_to_hf(config))
    state = {adapter.memory_name(k): v for k, v in adapter.to_hf(model.state_dict(), config).items()}
    with torch.no_grad():
        missing, unexpected = hf.load_state_dict(state, strict=False)
    tied = set(getattr(hf, "all_tied_weights_keys", {}) or {}) | {"lm_head.out_proj.weight"}
    tied |= {"model.decoder.embed_tokens.weight", "model.decoder.embed_tokens.eoi_embedding"}  # the encoder's
    text_missing = [n for n in missing if "vision" not in n and "multi_modal" not in n and n not in tied]
    if unexpected or text_missing:
        raise ValueError(f"T5Gemma 2 bench model: unexpected {unexpected[:3]}, missing {text_missing[:3]}")
    hf.save_pretrained(str(directory))


def _word_tokenizer(config: ModelConfig):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    names: dict[int, str] = {}  # one name an id (T5's pad is its decoder start token)
    for i, name in ((config.pad_token_id, "<pad>"), (config.eos_token_id, "<eos>"), (config.bos_token_id, "<bos>")):
        names.setdefault(i, name)
    vocab = {names.get(i, f"<t{i}>"): i for i in range(config.vocab_size)}
    pad = names[config.pad_token_id]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=pad)),
        pad_token=pad,
        bos_token=names[config.bos_token_id],
        eos_token=names[config.eos_token_id],
        unk_token=pad,
    )


def ct2_directory(config: ModelConfig, seed: int, checkpoint: Path | None) -> Path:
    """CTranslate2's own conversion (fp32) of `hf_directory`, cached."""
    import ctranslate2

    source = hf_directory(config, seed, checkpoint)

    def make(work: Path) -> None:
        ctranslate2.converters.TransformersConverter(str(source)).convert(str(work), force=True)

    return cached_directory(f"ct2-{config.family}", [str(source), ctranslate2.__version__], make)


def ct2_vocabulary(directory: Path) -> list[str]:
    for name in ("shared_vocabulary.json", "vocabulary.json", "target_vocabulary.json"):
        if (directory / name).is_file():
            return json.loads((directory / name).read_text())
    raise FileNotFoundError(f"{directory}: no vocabulary file in the CTranslate2 model")


def hf_model(config: ModelConfig, seed: int, checkpoint: Path | None, device, dtype):
    """transformers' own class of the family, loaded from `hf_directory`."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if config.arch == "encdec" else AutoModelForCausalLM
    directory = hf_directory(config, seed, checkpoint)
    return auto.from_pretrained(str(directory), dtype=dtype, device_map=str(device)).eval()
