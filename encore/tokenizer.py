"""Tokenizers: train a byte-level BPE, or load any Hugging Face tokenizer; T5 sentinels either way.

    tok = train_tokenizer(open_corpus("data/"), vocab_size=32000)   # byte-level BPE on your corpus
    tok = load_tokenizer("t5-small")                                # any HF tokenizer (dir or hub id)
    tok.save_pretrained("model_dir")                                # tokenizer.json: AutoTokenizer loads it

A trained tokenizer lays its ids out as ModelConfig's defaults expect: 0 `<pad>`, 1 `<s>` (BOS, the
decoder's start token), 2 `</s>` (EOS), 3 `<unk>`, then the 100 T5 sentinels `<extra_id_0>` ..
`<extra_id_99>` (ids 4..103), then a few reserved image tokens, then the 256 byte symbols and merges.
Byte-level BPE has no out-of-vocabulary text: decode(encode(x)) == x for every string, whitespace and
indentation included (this matters for code). `<unk>` exists only so configs that expect one find it.

A loaded tokenizer keeps every id it has: missing sentinels are appended after the last id and a
missing pad token is set to EOS (adding a new id would break distillation from a teacher with the same
vocabulary, and padding is masked by length, never by id). No post-processor adds specials to a trained
tokenizer; encore's data code adds BOS / EOS explicitly, so use `encode_text` for document text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from encore.files import check_local

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
N_SENTINELS = 100
SENTINELS = tuple(f"<extra_id_{i}>" for i in range(N_SENTINELS))
IMAGE_TOKENS = ("<image>", "<image_start>", "<image_end>")
UL2_MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")  # UL2's R-, X- and S-denoiser prefixes (Tay et al., 2022)


def special_tokens(n_sentinels: int = N_SENTINELS, image_tokens: Iterable[str] = IMAGE_TOKENS) -> list[str]:
    """The special tokens of a trained tokenizer, in id order (pad=0, bos=1, eos=2, unk=3, ...)."""
    return [PAD, BOS, EOS, UNK, *(f"<extra_id_{i}>" for i in range(n_sentinels)), *image_tokens]


def _bounded(texts: Iterable[str], max_chars: int | None, doc_chars: int | None) -> Iterator[str]:
    total = 0
    for text in texts:
        if doc_chars is not None:
            text = text[:doc_chars]
        if max_chars is not None and total + len(text) > max_chars:
            text = text[: max_chars - total]
        if text:
            total += len(text)
            yield text
        if max_chars is not None and total >= max_chars:
            return


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    n_sentinels: int = N_SENTINELS,
    image_tokens: Iterable[str] = IMAGE_TOKENS,
    max_chars: int | None = None,
    doc_chars: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with `vocab_size` ids in all (specials included) on `texts`, streamed.

    `max_chars` stops reading after that many characters and `doc_chars` keeps only the start of each
    text: both bound the training time on a large corpus (BPE merges saturate long before a corpus ends).
    """
    specials = special_tokens(n_sentinels, image_tokens)
    minimum = len(specials) + 256 + 1  # the specials, the 256 byte symbols, at least one merge
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: {len(specials)} special tokens + 256 byte symbols need >= {minimum}"
        )
    tok = Tokenizer(models.BPE())
    # GPT-2's regex pre-split keeps runs of spaces together (indentation) and never merges across words
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    tok.train_from_iterator(_bounded(texts, max_chars, doc_chars), trainer)
    if tok.get_vocab_size() < len(specials) + 256:
        raise ValueError("tokenizer training saw no text")
    return _wrap(tok, specials[4:])


def _wrap(tok: Tokenizer, extra: list[str]) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # the clean-up rewrites " ." to "." and breaks round trips
    )
    _add_special_tokens(fast, extra)
    return fast


def _add_special_tokens(tokenizer: PreTrainedTokenizerFast, tokens: list[str]) -> int:
    """Register `tokens` as (additional) special tokens; new ones get the next free ids, in order."""
    if not tokens:
        return 0
    new = [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in tokens]
    try:  # transformers >= 5 renamed "additional" to "extra"
        return tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    except TypeError:
        return tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_additional_special_tokens=False)


def auto_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """`AutoTokenizer.from_pretrained`, without its warning that an encore checkpoint's config.json
    (which AutoTokenizer peeks at) is no transformers model type."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    finally:
        hf_logging.set_verbosity(level)


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """A Hugging Face tokenizer from a directory, a tokenizer.json file or a hub id, made ready for
    encore: T5 sentinels appended when missing (existing ids never move), pad set to EOS when missing."""
    check_local(name_or_path, "tokenizer")
    path = Path(name_or_path)
    try:
        if path.is_file() and path.suffix == ".json":
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path), clean_up_tokenization_spaces=False)
        else:
            if path.is_dir() and not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
                raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer_config.json in this directory")
            tokenizer = auto_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    except FileNotFoundError:
        raise
    except Exception as e:  # the Rust side raises bare Exceptions for a malformed tokenizer.json
        where = "not a local path, and the hub did not provide it" if not path.exists() else "not a valid tokenizer"
        raise ValueError(f"tokenizer {str(name_or_path)!r}: {where} ({e!r:.300})") from e
    vocab = tokenizer.get_vocab()
    for attr, name in (("pad_token", PAD), ("bos_token", BOS), ("eos_token", EOS), ("unk_token", UNK)):
        if getattr(tokenizer, attr) is None and name in vocab:  # a bare tokenizer.json names no roles
            setattr(tokenizer, attr, name)
    if tokenizer.eos_token is None:
        sep = getattr(tokenizer, "sep_token", None)
        if sep is not None:
            tokenizer.eos_token = sep
        else:  # encore needs an end-of-sequence id; nothing to reuse, so append one
            _add_special_tokens(tokenizer, [EOS])
            tokenizer.eos_token = EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = tokenizer.get_vocab()
    _add_special_tokens(tokenizer, [s for s in SENTINELS if s not in vocab])
    return tokenizer


def sentinel_ids(tokenizer: PreTrainedTokenizerFast, n: int = N_SENTINELS) -> list[int]:
    """Ids of `<extra_id_0>` .. `<extra_id_{n-1}>`, in that order (T5's own vocabulary counts them down)."""
    vocab = tokenizer.get_vocab()
    missing = [s for s in SENTINELS[:n] if s not in vocab]
    if missing:
        raise ValueError(
            f"the tokenizer lacks {len(missing)} sentinel token(s) (e.g. {missing[0]}); use load_tokenizer"
        )
    return [vocab[s] for s in SENTINELS[:n]]


def encode_text(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of plain text: no BOS/EOS added, and a literal "<s>" or "<extra_id_0>" in the text is
    text (code and web pages contain such strings), never the special token of that name."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_texts(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """`encode_text` of many texts in one call: the Rust tokenizer encodes them as a batch (a code2doc
    training split, 11,274 texts: 1.8 s one by one)."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(pad, bos, eos) of a tokenizer; a tokenizer without BOS (T5's) starts decoding from pad, as T5 does."""
    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    if pad is None or eos is None:
        raise ValueError("the tokenizer needs pad and EOS tokens (encore.tokenizer.load_tokenizer sets them)")
    return pad, pad if bos is None else bos, eos


def chat_ids(tokenizer: Any, messages: list[dict[str, str]], template: str | None = None) -> list[int]:
    """The prompt ids of a conversation, as transformers' `apply_chat_template` makes them: the
    template (`template`, else the tokenizer's) renders the messages and the generation prompt, and the
    text is tokenized without adding special tokens (the template writes them)."""
    template = template or getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ValueError("the tokenizer has no chat template; pass one (--chat-template FILE)")
    text = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def language_id(tokenizer: Any, code: str, flag: str = "--src-lang") -> int:
    """A language code's token id in a multilingual tokenizer: NLLB's `fra_Latn`, mBART-50's `fr_XX`,
    M2M100's `fr` (its token `__fr__`). ValueError in one line for a code the tokenizer lacks."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    for token in (code, f"__{code}__"):
        found = tokenizer.convert_tokens_to_ids(token)
        if isinstance(found, int) and found != unknown and tokenizer.convert_ids_to_tokens(found) == token:
            return found
    known = [t for t in getattr(tokenizer, "all_special_tokens", []) if t not in (tokenizer.unk_token, None)]
    codes = [t for t in known if "_" in t.strip("_") or t.startswith("__")][:6]
    hint = f"; it knows codes such as {', '.join(codes)}" if codes else "; this tokenizer has no language codes"
    raise ValueError(f"{flag} {code!r}: not a language code of this model's tokenizer{hint}")


def read_template(path: str | None) -> str | None:
    """The text of `--chat-template FILE` (a Jinja template, as transformers' `chat_template`), or None."""
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--chat-template {path}: no such file")
    text = file.read_text()
    if "{{" not in text and "{%" not in text:
        raise ValueError(f"--chat-template {path}: not a Jinja chat template (no {{{{ or {{% in it)")
    return text
