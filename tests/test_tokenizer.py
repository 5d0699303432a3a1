import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from encore.data import vocab
from encore.data.vocab import default_tokenizer
from encore.tokenizer import (
    IMAGE_TOKENS,
    SENTINELS,
    encode_text,
    load_tokenizer,
    sentinel_ids,
    train_tokenizer,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    'def add(a, b):\n    """Return the sum."""\n    return a + b\n',
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, x):\n        self.items.append(x)\n",
    "Question: what is the capital of France? Context: Paris is the capital and largest city of France.",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)\n",
] * 20

TRICKY = [
    "",
    " leading space and trailing space ",
    "def f(x):\n\t  return x  # mixed\ttabs\n\n\n",
    "    deeply\n        indented\n            code\r\n",
    "unicode: héllo wörld, 日本語, ελληνικά, emoji 🎉👩‍💻, zero\u200bwidth",
    "literal specials: <s> </s> <pad> <unk> <extra_id_0> <image>",
    "control \x00\x01\x7f and \\backslashes\\ and 'quotes\"",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=420)


def test_trained_layout_matches_config_defaults(tok):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<s>", "</s>", "<unk>")
    assert sentinel_ids(tok) == list(range(4, 104))
    assert [tok.convert_tokens_to_ids(t) for t in IMAGE_TOKENS] == [104, 105, 106]
    assert 363 < len(tok) <= 420  # specials + 256 bytes + some merges, never more than asked
    assert tok("abc")["input_ids"] == encode_text(tok, "abc")  # no post-processor adds specials


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_arbitrary_text(tok, text):
    ids = encode_text(tok, text)
    assert tok.decode(ids) == text
    assert all(i >= 107 for i in ids)  # plain text never becomes a special token


def test_literal_specials_in_text_are_text(tok):
    ids = encode_text(tok, "<extra_id_0></s>")
    assert sentinel_ids(tok)[0] not in ids and tok.eos_token_id not in ids
    # asked for explicitly (the HF default), the special tokens are matched
    assert tok("<extra_id_0>", add_special_tokens=False)["input_ids"] == [sentinel_ids(tok)[0]]
    assert tok.decode([5, *encode_text(tok, "hi"), 2], skip_special_tokens=True) == "hi"


def test_save_and_load_with_auto_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(again, PreTrainedTokenizerFast)
    assert len(again) == len(tok)
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)
    assert sentinel_ids(again) == sentinel_ids(tok)
    for text in TRICKY:
        assert encode_text(again, text) == encode_text(tok, text)
    # load_tokenizer leaves an encore tokenizer exactly as it is, from the directory or the file
    for source in (tmp_path, tmp_path / "tokenizer.json"):
        loaded = load_tokenizer(source)
        assert len(loaded) == len(tok) and sentinel_ids(loaded) == sentinel_ids(tok)
        assert loaded.pad_token_id == 0 and encode_text(loaded, TRICKY[4]) == encode_text(tok, TRICKY[4])


def _gpt2_like(tmp_path):
    """A tokenizer like GPT-2's: byte-level BPE, one <|endoftext|> for BOS/EOS, no pad, no sentinels."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(TEXTS, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    hf.save_pretrained(tmp_path)
    return hf


def test_load_adds_sentinels_after_existing_ids(tmp_path):
    base = _gpt2_like(tmp_path / "gpt2")
    n = len(base)
    tok = load_tokenizer(tmp_path / "gpt2")
    assert sentinel_ids(tok) == list(range(n, n + 100))  # appended, in order
    assert len(tok) == n + 100
    assert tok.pad_token_id == tok.eos_token_id == base.eos_token_id  # pad reuses EOS: no new id
    for text in TRICKY:  # every existing id keeps its meaning
        assert encode_text(tok, text) == encode_text(base, text)
    tok.save_pretrained(tmp_path / "with_sentinels")
    again = AutoTokenizer.from_pretrained(tmp_path / "with_sentinels")
    assert sentinel_ids(again) == sentinel_ids(tok) and again.pad_token_id == tok.pad_token_id
    # loading again adds nothing
    assert len(load_tokenizer(tmp_path / "with_sentinels")) == n + 100


def test_load_keeps_existing_sentinels(tmp_path):
    """T5's vocabulary has the sentinels already, counting down from the end: nothing is added or moved."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["<pad>", "</s>", "<unk>", *reversed(SENTINELS)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    raw.train_from_iterator(TEXTS, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    hf.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert len(tok) == len(hf)
    assert sentinel_ids(tok) == list(range(102, 2, -1))
    assert tok.pad_token_id == 0 and tok.bos_token_id is None


def test_errors(tmp_path, tok):
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(TEXTS, vocab_size=300)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token="x")
    with pytest.raises(ValueError, match="lacks 100 sentinel"):
        sentinel_ids(bare)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ValueError, match="not a valid tokenizer"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_default_tokenizer_trained_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCORE_CACHE", str(tmp_path))
    tok = default_tokenizer(vocab_size=1024)
    assert len(tok) == 1024 and sentinel_ids(tok) == list(range(4, 104))
    cached = vocab.default_tokenizer_path(1024)
    assert cached.parent == tmp_path and (cached / "tokenizer.json").is_file()
    assert "vocab1024" in cached.name

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been used")

    monkeypatch.setattr(vocab, "train_tokenizer", no_training)
    again = default_tokenizer(vocab_size=1024)
    code = "import os\n\nclass Foo:\n    def bar(self):\n        return os.path.join('a', 'b')\n"
    assert encode_text(again, code) == encode_text(tok, code)
    assert again.decode(encode_text(again, code)) == code
    assert len(encode_text(tok, code)) < len(code.encode()) / 2  # it learned Python


def test_tokenizer_command(tmp_path, capsys):
    from encore.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS * 20))
    assert main(["tokenizer", "--corpus", str(corpus), "--vocab-size", "512", "--out", str(tmp_path / "tok")]) == 0
    assert "512 tokens" in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "tok")
    assert len(tok) == 512 and sentinel_ids(tok) == list(range(4, 104))
    assert tok.decode(encode_text(tok, TEXTS[1])) == TEXTS[1]
    assert main(["tokenizer", "--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.txt" in capsys.readouterr().err
