"""`encore.adapt`: decoder-only checkpoints of the Llama, Qwen2, Qwen3 and Gemma 3 families (tiny random
transformers models) become encoder-decoders whose every weight is the source weight it came from;
the adapted model trains with each objective through the CLI and resumes exactly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_convert import DECODER_ONLY, _reference
from test_convert_cli import TEXTS, VOCAB, _hf_model

from encore.adapt import AdaptError, adapt, pick_layers
from encore.cli import main
from encore.convert import load
from encore.data.objectives import MODE_TOKENS, PrefixLMStream, UL2Stream
from encore.model.io import read_state
from encore.tokenizer import train_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=sorted(DECODER_ONLY))
def source(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    _reference(DECODER_ONLY[request.param]).save_pretrained(directory)
    return load(directory)


def _same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape and torch.equal(a, b), what


def test_every_weight_is_the_source_weight_it_came_from(source):
    n = source.config.n_decoder_layers
    model = adapt(source, decoder_layers=[n - 1, 0])  # a subset, in a chosen order
    src = dict(source.named_parameters())
    _same(model.embed.weight, src["embed.weight"], "embedding")
    _same(model.final_norm.weight, src["final_norm.weight"], "final norm")
    _same(model.encoder_norm.weight, src["final_norm.weight"], "encoder norm")
    for part, picked in (("encoder", list(range(n))), ("decoder", [n - 1, 0])):
        for j, i in enumerate(picked):
            for name, p in getattr(model, part)[j].named_parameters():
                if name.split(".")[0] in ("cross", "cross_norm", "post_cross_norm"):
                    continue
                _same(p, src[f"decoder.{i}.{name}"], f"{part}.{j}.{name} <- decoder.{i}.{name}")
    rows = source.config.n_heads * source.config.head_dim
    for j, i in enumerate([n - 1, 0]):
        layer = model.decoder[j]
        qkv = src[f"decoder.{i}.attn.qkv.weight"]
        _same(layer.cross.q.weight, qkv[:rows], "cross q = self q")
        _same(layer.cross.kv.weight, qkv[rows:], "cross kv = self kv")
        _same(layer.cross.out.weight, src[f"decoder.{i}.attn.out.weight"], "cross out = self out")
        _same(layer.cross_norm.weight, src[f"decoder.{i}.attn_norm.weight"], "cross norm = attention norm")
        if source.config.qkv_bias:
            _same(layer.cross.q.bias, src[f"decoder.{i}.attn.qkv.bias"][:rows], "cross q bias")
        if source.config.qk_norm:
            _same(layer.cross.k_norm.weight, src[f"decoder.{i}.attn.qk_norm.k.weight"], "cross k norm")
    assert model.config.param_counts()["total"] == sum(p.numel() for p in model.parameters())
    kinds = source.config.layer_types("decoder")
    assert model.config.layer_types("decoder") == [kinds[n - 1], kinds[0]]


def test_a_silent_cross_attention_starts_as_the_source_reading_the_target(source):
    model = adapt(source, cross_init="zero")
    torch.manual_seed(0)
    x, y = torch.randint(3, 150, (2, 9)), torch.randint(3, 150, (2, 6))
    with torch.no_grad():
        ours, theirs = model(x, y), source(y)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    layer, own = model.decoder[0], source.decoder[0]
    rows = source.config.n_heads * source.config.head_dim
    _same(layer.cross.q.weight, own.attn.qkv.weight[:rows], "q as under 'self'")
    assert not layer.cross.out.weight.any()


def test_random_cross_attention_is_fresh_and_seeded(source):
    a, b = adapt(source, cross_init="random", seed=1), adapt(source, cross_init="random", seed=1)
    rows = source.config.n_heads * source.config.head_dim
    q = a.decoder[0].cross.q.weight
    assert not torch.equal(q, source.decoder[0].attn.qkv.weight[:rows])
    assert torch.equal(q, b.decoder[0].cross.q.weight)
    assert torch.equal(a.decoder[0].attn.qkv.weight, source.decoder[0].attn.qkv.weight)


def test_pick_layers_keeps_the_ends_of_the_stack():
    assert pick_layers(10, 30, "--decoder-layers") == [0, 1, 2, 3, 24, 25, 26, 27, 28, 29]
    assert pick_layers("all", 3, "--encoder-layers") == [0, 1, 2]
    assert pick_layers(3, 3, "--encoder-layers") == [0, 1, 2]
    assert pick_layers("1", 5, "--decoder-layers") == [4]
    assert pick_layers("4,1", 5, "--decoder-layers") == [4, 1]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0,7", "--decoder-layers: layer 7 does not exist; the source has layers 0 to 2"),
        ("9", "--decoder-layers 9: the source has 3 layers; choose 1 to 3"),
        ("1,1", "--decoder-layers: layer indices repeat (1,1)"),
        ("half", "--decoder-layers 'half': expected 'all', a layer count or indices"),
    ],
)
def test_a_decoder_subset_naming_missing_layers_is_one_line(spec, message):
    with pytest.raises(AdaptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pick_layers(spec, 3, "--decoder-layers")


def test_a_weightless_source_is_refused(tmp_path, capsys):
    assert main(["adapt", "--from", "deconly-tiny", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a preset or config file has no weights to adapt" in err


def test_a_shallower_decoder_from_an_encoder_decoder(tmp_path, capsys):
    """distil-whisper's recipe on a BART checkpoint (3 decoder layers): `--decoder-layers 2` keeps the
    encoder and decoder layers 0 and 2 (the ends), every weight the source's; Whisper's alignment heads
    follow their layers; the result writes back as BART and transformers reads the same logits."""
    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=64,
        dropout=0.0, forced_eos_token_id=None,
    )  # fmt: skip
    transformers.BartForConditionalGeneration(config).save_pretrained(tmp_path / "bart")
    train_tokenizer(TEXTS, vocab_size=VOCAB).save_pretrained(str(tmp_path / "bart"))
    source = load(tmp_path / "bart")
    source.generation_config["alignment_heads"] = [[0, 1], [1, 2], [2, 3]]
    shallow = adapt(source, decoder_layers=2)
    assert (shallow.config.n_encoder_layers, shallow.config.n_decoder_layers) == (2, 2)
    assert shallow.config.family == "bart" and shallow.generation_config["alignment_heads"] == [[0, 1], [1, 3]]
    want = source.state_dict()
    for name, tensor in shallow.state_dict().items():
        origin = name.replace("decoder.1.", "decoder.2.") if name.startswith("decoder.1.") else name
        _same(tensor, want[origin], name)
    shallow.save_pretrained(tmp_path / "hf", format="hf")
    again = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert again.config.decoder_layers == 2
    ids = torch.randint(3, VOCAB, (1, 9))
    with torch.no_grad():
        theirs = again(input_ids=ids, decoder_input_ids=ids[:, :4]).logits
        ours = shallow(ids, ids[:, :4])
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()
    argv = ["adapt", "--from", str(tmp_path / "bart"), "--out", str(tmp_path / "cli"), "--decoder-layers", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 encoder + 2 decoder layers" in out and "decoder from 0,2; cross-attention kept" in out
    assert load(tmp_path / "cli").config.n_decoder_layers == 2


# --- through the command line: adapt, then pretrain with each objective --------------------------------


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """(source directory, adapted directory, corpus file): a tiny Llama with encore's tokenizer."""
    root = tmp_path_factory.mktemp("adapt")
    src = root / "llama"
    model = _hf_model("qwen3")
    model.save_pretrained(src)
    train_tokenizer(TEXTS, vocab_size=VOCAB).save_pretrained(str(src))
    out = root / "ed"
    argv = ["adapt", "--from", str(src), "--out", str(out), "--decoder-layers", "1", "--sentinels", "100"]
    assert main(argv) == 0
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    return src, out, corpus


def test_adapt_writes_a_loadable_model_with_its_tokens(adapted):
    src, out, _ = adapted
    model = load(out)
    assert model.config.arch == "encdec" and model.config.n_decoder_layers == 1
    vocab = model.tokenizer.get_vocab()
    assert all(t in vocab for t in MODE_TOKENS.values()) and model.config.vocab_size >= len(model.tokenizer)
    assert json.loads((out / "adapt.json").read_text())["decoder_layers"] == [1]
    _same(model.embed.weight[:VOCAB], load(src).embed.weight, "embedding rows of the source's ids")


def test_new_tokens_grow_the_tables_from_their_mean_row(source):
    from encore.adapt import add_sentinels

    model = adapt(source)
    model.tokenizer = _tok()  # more ids than the tiny model's 160 rows, and no mode tokens
    n = model.config.vocab_size
    old = model.embed.weight.detach().clone()
    assert add_sentinels(model, 100) == len(MODE_TOKENS)
    rows = model.config.vocab_size
    assert rows % 64 == 0 and rows >= len(model.tokenizer) and model.embed.weight.shape[0] == rows
    _same(model.embed.weight[:n], old, "the old rows")
    assert torch.allclose(model.embed.weight[n:], old.mean(0).expand(rows - n, -1))
    x = torch.tensor([[len(model.tokenizer) - 1, 5]])
    assert model(x, x).shape == (1, 2, rows)


def _pretrain(adapted, out, objective, steps, *extra):
    src, model, corpus = adapted
    argv = ["pretrain", "--model", str(model), "--data", str(corpus), "--objective", objective, "--out", str(out),
            "--seq-len", "32", "--max-steps", str(steps), "--batch-size", "4", "--micro-batch-size", "2",
            "--save-every", "2", *extra]  # fmt: skip
    if objective == "prefix_lm":
        argv += ["--teacher", str(src), "--alpha", "0.5"]
    return main(argv)


@pytest.mark.parametrize("objective", ["prefix_lm", "ul2", "span_corruption"])
def test_an_adapted_model_trains_with_each_objective_and_resumes_exactly(adapted, tmp_path, objective):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _pretrain(adapted, straight, objective, 4) == 0
    shutil.copytree(straight, resumed)  # then back to step 2, as if the run had stopped there
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    shutil.rmtree(resumed / "final")
    assert _pretrain(adapted, resumed, objective, 4, "--resume") == 0
    a, b = read_state(straight / "final"), read_state(resumed / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    if objective == "prefix_lm":
        assert all("kd" in r and "ce" in r for r in records if "loss" in r)


def test_train_only_cross_attention_moves_nothing_else(adapted, tmp_path):
    _, model, corpus = adapted
    out = tmp_path / "warm"
    argv = ["pretrain", "--model", str(model), "--data", str(corpus), "--objective", "prefix_lm", "--out", str(out),
            "--seq-len", "32", "--max-steps", "2", "--batch-size", "2", "--micro-batch-size", "2",
            "--train-only", "cross_attention", "--eval-data", str(corpus), "--eval-every", "2"]  # fmt: skip
    assert main(argv) == 0
    before, after = read_state(model), read_state(out / "final")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".cross." in k or ".cross_norm." in k for k in moved)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
    assert [r["step"] for r in evals] == [0, 2]  # the held-out loss before training, and after


def test_teacher_needs_prefix_lm(adapted, tmp_path, capsys):
    src, model, corpus = adapted
    argv = ["pretrain", "--model", str(model), "--data", str(corpus), "--objective", "ul2", "--teacher", str(src),
            "--out", str(tmp_path / "x"), "--max-steps", "1"]  # fmt: skip
    assert main(argv) == 2
    assert "--teacher: distillation during pretraining needs --objective prefix_lm" in capsys.readouterr().err


# --- the objectives' streams ---------------------------------------------------------------------------------


def test_prefix_lm_splits_each_chunk_once_and_resumes(adapted):
    _, model_dir, corpus = adapted
    from encore.data import open_corpus

    model = load(model_dir)
    stream = PrefixLMStream(open_corpus(str(corpus)), model.tokenizer, seq_len=24, source=model.config.source_ids)
    it = iter(stream)
    first = [next(it) for _ in range(3)]
    for e in first:
        assert len(e["source_ids"]) >= 1 and len(e["target_ids"]) >= 1
        assert len(e["source_ids"]) + len(e["target_ids"]) == 24  # Qwen's layout adds nothing to a source
    state = stream.state_dict()
    nxt = next(it)
    again = PrefixLMStream(open_corpus(str(corpus)), model.tokenizer, seq_len=24, source=model.config.source_ids)
    again.load_state_dict(state)
    assert next(iter(again)) == nxt


def test_ul2_uses_every_denoiser_with_its_mode_token(adapted):
    _, model_dir, corpus = adapted
    from encore.data import open_corpus

    model = load(model_dir)
    vocab = model.tokenizer.get_vocab()
    stream = UL2Stream(open_corpus(str(corpus)), model.tokenizer, seq_len=64, source=model.config.source_ids)
    modes = {vocab[t]: f for f, t in MODE_TOKENS.items()}
    seen = {modes[e["source_ids"][0]] for _, e in zip(range(60), stream)}
    assert seen == {"R", "X", "S"}


def test_ul2_without_mode_tokens_names_the_fix(source):
    from encore.data import open_corpus

    with pytest.raises(ValueError, match=r"encore adapt --sentinels 100"):
        UL2Stream(open_corpus("stdlib"), source.tokenizer or _tok(), seq_len=32, source=list)


def _tok():
    return train_tokenizer(TEXTS, vocab_size=VOCAB)
