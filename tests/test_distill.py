"""Distillation core: alignment, divergences, vocabulary and tokenizer checks, offline top-k, loaders."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encore import DecoderOnly, EncoderDecoder, ModelConfig
from encore.distill import (
    DistillError,
    DistillLoss,
    SparseLogits,
    Teacher,
    TokenizerMismatchError,
    TopKStore,
    TopKWriter,
    aligned_teacher_logits,
    check_sparse_targets,
    check_tokenizers,
    distillation_loss,
    generate_teacher_targets,
    kd_loss,
    kd_loss_sparse,
    load_teacher,
    precompute_topk,
    teacher_layout,
    topk_teacher_logits,
)

transformers = pytest.importorskip("transformers")
KINDS = ["reverse_kl", "forward_kl", "jsd"]
PAD, BOS, EOS = 0, 1, 2


# --- helpers ---------------------------------------------------------------------------------------


def make_tokenizer(words: list[str], sentinels: int = 0, prepend_bos: bool = False, eos: str = "</s>"):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if prepend_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    extra = [f"<extra_id_{i}>" for i in range(sentinels)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token=eos, additional_special_tokens=extra or None
    )


WORDS = [f"w{i}" for i in range(37)]  # 3 specials + 37 words = 40 ids


def tiny_llama(vocab_size: int = 48, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # spread the logits so the distributions are far from uniform
        model.lm_head.weight.normal_(0, 0.5)
    return model


def tiny_student(vocab_size: int = 48, seed: int = 0) -> EncoderDecoder:
    torch.manual_seed(seed)
    config = ModelConfig.preset(
        "encdec-tiny",
        vocab_size=vocab_size,
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        mlp_dim=128,
        n_encoder_layers=1,
        n_decoder_layers=1,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return EncoderDecoder(config)


def mixed_batch(seed: int = 0, vocab: int = 40):
    """Right-padded sources of lengths 3, 1, 5 and targets of 2, 4, 1 (garbage / −100 in the padding)."""
    g = torch.Generator().manual_seed(seed)
    sx, sy = [3, 1, 5], [2, 4, 1]
    src = torch.randint(3, vocab, (3, 5), generator=g)
    tgt = torch.randint(3, vocab, (3, 4), generator=g)
    src_mask = torch.arange(5)[None] < torch.tensor(sx)[:, None]
    tgt_mask = torch.arange(4)[None] < torch.tensor(sy)[:, None]
    src = src.masked_fill(~src_mask, 7)  # a real id in the padding: must not leak into the teacher
    labels = tgt.masked_fill(~tgt_mask, -100)
    return src, src_mask.long(), labels, tgt_mask.long()


class FeatureTeacher(nn.Module):
    """A causal 'teacher' whose logits spell out what it saw: at column c, features
    [position id, token, number of real tokens so far, Σ token·(pos+1) over real tokens so far]."""

    def __init__(self, vocab_size: int = 48):
        super().__init__()
        self.vocab_size = vocab_size
        self.calls = []

    def forward(self, input_ids, attention_mask, position_ids):
        self.calls.append(input_ids.shape)
        m = attention_mask.float()
        out = torch.zeros(*input_ids.shape, self.vocab_size)
        out[..., 0] = position_ids.float()
        out[..., 1] = input_ids.float()
        out[..., 2] = m.cumsum(1)
        out[..., 3] = (input_ids.float() * (position_ids.float() + 1) * m).cumsum(1)
        return out


def features(context: list[int]) -> list[float]:
    """What FeatureTeacher shows after reading `context` (unpadded) at its last token."""
    n = len(context)
    return [n - 1, context[-1], n, sum(t * (i + 1) for i, t in enumerate(context))]


# --- 2. alignment ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bos", [None, BOS])
def test_alignment_against_known_teacher_with_mixed_padding(bos):
    src, src_mask, labels, tgt_mask = mixed_batch()
    src[2, 0] = BOS  # this row already starts with BOS: it must not be doubled
    teacher = FeatureTeacher()
    out = aligned_teacher_logits(teacher, src, src_mask, labels, tgt_mask, teacher_bos_id=bos)
    assert out.shape == (3, 4, 48)
    for b in range(3):
        x = src[b, : int(src_mask[b].sum())].tolist()
        y = labels[b, : int(tgt_mask[b].sum())].tolist()
        prefix = [bos] if bos is not None and x[0] != bos else []
        for j in range(len(y)):
            assert out[b, j, :4].tolist() == features(prefix + x + y[:j]), (b, j)


def test_teacher_layout_is_left_padded_source_then_right_padded_target():
    src, src_mask, labels, tgt_mask = mixed_batch()
    ids, mask, pos, start = teacher_layout(src, src_mask, labels, tgt_mask, bos_id=BOS, pad_id=PAD)
    assert start == 6 and ids.shape == (3, 6 + 4 - 1)
    assert ids[0].tolist()[:6] == [PAD, PAD, BOS] + src[0, :3].tolist()
    assert mask[1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]  # [bos] x0 | y0 y1 y2
    assert pos[1].tolist()[4:] == [0, 1, 2, 3, 4]
    with pytest.raises(DistillError, match="not right-padded"):
        teacher_layout(src, src_mask.flip(1), labels, tgt_mask)
    with pytest.raises(DistillError, match="empty"):
        teacher_layout(src, torch.zeros_like(src_mask), labels, tgt_mask)


def test_llama_teacher_alignment_matches_unpadded_forward():
    llama = tiny_llama()
    teacher = Teacher(llama, bos_id=BOS, valid_vocab=40)
    src, src_mask, labels, tgt_mask = mixed_batch()
    out = aligned_teacher_logits(teacher, src, src_mask, labels, tgt_mask, vocab_size=48)
    assert out.shape == (3, 4, 48)
    assert torch.isneginf(out[..., 40:]).all() and torch.isfinite(out[..., :40]).all()
    with torch.no_grad():
        for b in range(3):
            x = src[b, : int(src_mask[b].sum())].tolist()
            y = labels[b, : int(tgt_mask[b].sum())].tolist()
            ref = llama(input_ids=torch.tensor([[BOS] + x + y])).logits[0]
            rows = torch.arange(len(y)) + len(x)  # BOS shifts |x| − 1 by one
            torch.testing.assert_close(out[b, : len(y), :40], ref[rows, :40], atol=1e-4, rtol=1e-4)
    # a raw HF model (no wrapper) works too, with the BOS given explicitly
    raw = aligned_teacher_logits(llama, src, src_mask, labels, tgt_mask, teacher_bos_id=BOS)
    torch.testing.assert_close(raw[..., :40], out[..., :40])


def test_alignment_refuses_ids_beyond_teacher_vocab():
    src, src_mask, labels, tgt_mask = mixed_batch()
    labels[1, 2] = 60
    with pytest.raises(DistillError, match=r"target_ids\[1, 2\] = 60"):
        aligned_teacher_logits(Teacher(tiny_llama()), src, src_mask, labels, tgt_mask)


def test_kd_with_llama_teacher_trains_encdec_student():
    teacher = Teacher(tiny_llama(), bos_id=BOS, valid_vocab=40)
    student = tiny_student()
    src, src_mask, labels, tgt_mask = mixed_batch()
    tl = aligned_teacher_logits(teacher, src, src_mask, labels, tgt_mask, vocab_size=48)
    dec_in = torch.cat([torch.full((3, 1), BOS), labels[:, :-1].clamp(min=0)], 1)
    dec_mask = torch.cat([torch.ones(3, 1, dtype=torch.long), tgt_mask[:, :-1]], 1)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        logits = student(src, dec_in, src_mask, dec_mask)
        loss = kd_loss(logits, tl, tgt_mask, "reverse_kl")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert not any(p.requires_grad for p in teacher.parameters())


# --- 3. divergences --------------------------------------------------------------------------------

P = [0.7, 0.2, 0.1]  # teacher
Q = [0.4, 0.4, 0.2]  # student
# reverse: 0.4 ln(4/7) + 0.4 ln 2 + 0.2 ln 2 ; forward: 0.7 ln(7/4) + 0.2 ln(1/2) + 0.1 ln(1/2)
# jsd(0.5): M = [0.55, 0.3, 0.15] ; 0.5·KL(P‖M) + 0.5·KL(Q‖M) = 0.5·0.0471740 + 0.5·0.0452277
# skew_forward_kl(0.1): M = 0.1·P + 0.9·Q = [0.43, 0.38, 0.19]; KL(P‖M) = 0.7 ln(0.7/0.43) + 0.2 ln(0.2/0.38)
#   + 0.1 ln(0.1/0.19); skew_reverse_kl(0.1): M = 0.1·Q + 0.9·P = [0.67, 0.22, 0.11]; KL(Q‖M)
HAND = {
    "reverse_kl": 0.1920420,
    "forward_kl": 0.1837869,
    "jsd": 0.0462008,
    "skew_forward_kl": 0.1485504,
    "skew_reverse_kl": 0.1523769,
}


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_hand_values(kind):
    t = torch.tensor(P).log().view(1, 1, 3) + 5.0  # shifts do not change the distribution
    s = torch.tensor(Q).log().view(1, 1, 3) - 2.0
    # a second, masked-out position holding garbage must not matter
    t = torch.cat([t, torch.full((1, 1, 3), float("nan"))], 1)
    s = torch.cat([s, torch.zeros(1, 1, 3)], 1)
    value = kd_loss(s, t, torch.tensor([[1, 0]]), kind=kind)
    assert value.item() == pytest.approx(HAND[kind], abs=1e-6)


def test_jsd_beta_and_temperature():
    t = torch.tensor(P).log().view(1, 1, 3)
    s = torch.tensor(Q).log().view(1, 1, 3)
    # β = 0.9: M = [0.67, 0.22, 0.11]
    assert kd_loss(s, t, kind="jsd", beta=0.9).item() == pytest.approx(0.0170996, abs=1e-6)
    # τ = 2 divides the logits: p ∝ sqrt(P), q ∝ sqrt(Q)
    p2 = torch.tensor(P).sqrt() / torch.tensor(P).sqrt().sum()
    q2 = torch.tensor(Q).sqrt() / torch.tensor(Q).sqrt().sum()
    expected = (q2 * (q2 / p2).log()).sum().item()
    assert kd_loss(s, t, temperature=2.0).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(DistillError, match="beta"):
        kd_loss(s, t, kind="jsd", beta=1.0)
    with pytest.raises(DistillError, match="kind"):
        kd_loss(s, t, kind="kl")


def test_distillation_loss_mixes_kd_and_ce():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 4, -100], [0, -100, -100]])
    total, kd, ce = distillation_loss(s, t, labels, alpha=0.3, temperature=2.0)
    m = labels != -100
    assert kd.item() == pytest.approx(kd_loss(s, t, m, temperature=2.0).item())
    assert ce.item() == pytest.approx(F.cross_entropy(s[m], labels[m]).item())
    assert total.item() == pytest.approx(0.3 * 4 * kd.item() + 0.7 * ce.item(), rel=1e-6)


# --- 1. vocabulary and tokenizers ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_padded_teacher_vocab_is_masked_and_renormalised(kind):
    torch.manual_seed(0)
    student = torch.randn(2, 3, 48, requires_grad=True)
    teacher = torch.randn(2, 3, 48)
    teacher[..., 40:] = float("-inf")  # what aligned_teacher_logits makes of ids >= len(tokenizer)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss = kd_loss(student, teacher, mask, kind)
    ref = kd_loss(student[..., :40], teacher[..., :40], mask, kind)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all() and (student.grad[..., 40:] == 0).all()


def test_tokenizer_checks():
    base = make_tokenizer(WORDS)
    assert check_tokenizers(base, make_tokenizer(WORDS)) == 40
    # the student may add T5 sentinels after the teacher's vocabulary
    assert check_tokenizers(base, make_tokenizer(WORDS, sentinels=3)) == 40
    with pytest.raises(TokenizerMismatchError, match="map to different tokens"):
        check_tokenizers(base, make_tokenizer([f"v{i}" for i in range(37)]))
    with pytest.raises(TokenizerMismatchError, match="neither <extra_id_N> sentinels nor UL2 mode tokens"):
        check_tokenizers(base, make_tokenizer(WORDS + ["zz"]))
    with pytest.raises(TokenizerMismatchError, match="lacks 2 ordinary tokens"):
        check_tokenizers(make_tokenizer(WORDS + ["a", "b"]), base)
    with pytest.raises(TokenizerMismatchError, match="EOS"):
        check_tokenizers(base, make_tokenizer(WORDS, eos="<pad>"))


# --- 5. offline top-k ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("vocab", ["full", "padded", "holes"])
def test_topk_with_k_equal_vocab_reproduces_dense(kind, vocab):
    torch.manual_seed(1)
    V = 24
    student = torch.randn(2, 4, V, requires_grad=True)
    teacher = 3 * torch.randn(2, 4, V)
    k = V
    if vocab != "full":
        teacher[..., 20:] = float("-inf")  # padded embedding: cut off by vocab_limit
    if vocab == "holes":
        teacher[..., 5:8] = float("-inf")  # zero-probability ids inside the vocabulary
        k = 17  # exactly the teacher's support: no tail mass, and the student's complement is dropped
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    dense = kd_loss(student, teacher, mask, kind, temperature=2.0)
    (g_dense,) = torch.autograd.grad(dense, student)
    sparse = topk_teacher_logits(teacher, mask, k=k, temperature=2.0)
    assert sparse.vocab_limit == (V if vocab == "full" else 20) and sparse.k == min(k, sparse.vocab_limit)
    loss = kd_loss_sparse(student, sparse, mask, kind)
    (g_sparse,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(loss, dense, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_sparse, g_dense, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_small_k_is_a_lower_bound(kind):
    torch.manual_seed(2)
    student, teacher = torch.randn(3, 5, 32, requires_grad=True), 2 * torch.randn(3, 5, 32)
    dense = kd_loss(student, teacher, kind=kind)
    sparse = topk_teacher_logits(teacher, None, k=4)
    assert torch.allclose(sparse.values.exp().sum(-1) + sparse.tail_logmass.exp(), torch.ones(3, 5))
    approx = kd_loss_sparse(student, sparse, kind=kind)
    assert 0 < approx.item() <= dense.item() + 1e-6
    approx.backward()
    assert torch.isfinite(student.grad).all()


def test_topk_store_roundtrip_and_checks(tmp_path):
    teacher = Teacher(tiny_llama(), bos_id=BOS, valid_vocab=40)
    src, src_mask, labels, tgt_mask = mixed_batch()
    batches = [{"input_ids": src, "attention_mask": src_mask, "labels": labels, "example_ids": torch.tensor([5, 3, 9])}]
    store = precompute_topk(teacher, batches, tmp_path / "topk", k=8, vocab_size=48, values_dtype=torch.float32)
    assert len(store) == 3 and store.k == 8 and store.vocab_limit == 40
    assert store[3]["values"].shape == (4, 8)
    # a batch in another order reads the right rows back
    order = [2, 0]
    sparse = store.batch([9, 5], length=4)
    dense = aligned_teacher_logits(teacher, src[order], src_mask[order], labels[order], tgt_mask[order], vocab_size=48)
    direct = topk_teacher_logits(dense, tgt_mask[order], k=8)
    student = torch.randn(2, 4, 48)
    for kind in KINDS:
        a = kd_loss_sparse(student, sparse, tgt_mask[order], kind)
        b = kd_loss_sparse(student, direct, tgt_mask[order], kind)
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert isinstance(sparse, SparseLogits) and sparse.temperature == 1.0
    with pytest.raises(DistillError, match="temperature"):
        distillation_loss(student, sparse, labels[order], temperature=2.0)
    check_sparse_targets(sparse, labels[order], tgt_mask[order])
    wrong = labels[order].clone()
    wrong[1, 0] = (wrong[1, 0] + 1) % 40
    with pytest.raises(DistillError, match="other data"):
        check_sparse_targets(sparse, wrong, tgt_mask[order])
    with pytest.raises(DistillError, match="already"):
        TopKWriter(tmp_path / "topk")
    writer = TopKWriter(tmp_path / "partial")
    writer.add(direct, tgt_mask[order], [0, 1])  # never closed: no index
    with pytest.raises(DistillError, match="missing"):
        TopKStore(tmp_path / "partial")


def test_distill_loss_online_and_offline(tmp_path):
    teacher = Teacher(tiny_llama(), bos_id=BOS, valid_vocab=40)
    student = tiny_student()
    src, src_mask, labels, tgt_mask = mixed_batch()
    batch = {
        "input_ids": src,
        "attention_mask": src_mask,
        "decoder_input_ids": torch.cat([torch.full((3, 1), BOS), labels[:, :-1].clamp(min=0)], 1),
        "decoder_attention_mask": torch.cat([torch.ones(3, 1, dtype=torch.long), tgt_mask[:, :-1]], 1),
        "labels": labels,
        "example_ids": torch.tensor([0, 1, 2]),
    }
    online = DistillLoss(teacher, alpha=0.5)
    out = online(student, batch)
    assert online.target_tokens(batch) == 7 and torch.isfinite(out.total) and out.total.requires_grad
    store = precompute_topk(teacher, [batch], tmp_path / "s", k=48, vocab_size=48, values_dtype=torch.float32)
    offline = DistillLoss(store=store, alpha=0.5)(student, batch)
    assert offline.total.item() == pytest.approx(out.total.item(), rel=1e-4)  # k covers the shared vocabulary
    assert set(out.metrics) == {"kd", "ce"}
    kd, ce = float(out.metrics["kd"]), float(out.metrics["ce"])  # per-token means
    assert out.total.item() == pytest.approx(7 * (0.5 * kd + 0.5 * ce), rel=1e-4)


# --- loaders and generation ------------------------------------------------------------------------


def test_load_hf_teacher_with_lora_and_tokenizer_check(tmp_path):
    peft = pytest.importorskip("peft")
    llama = tiny_llama()
    tok = make_tokenizer(WORDS, prepend_bos=True)
    llama.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    lora_model = peft.get_peft_model(
        tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora_model.save_pretrained(tmp_path / "lora")
    x = torch.tensor([[BOS, 5, 9, 11, 3]])
    with torch.no_grad():
        expected = lora_model(input_ids=x).logits
        base = llama(input_ids=x).logits
    teacher = load_teacher(tmp_path / "base", tokenizer=make_tokenizer(WORDS, sentinels=2), lora=tmp_path / "lora")
    assert teacher.bos_id == BOS and teacher.valid_vocab == 40 and teacher.vocab_size == 48
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.model.training
    got = teacher(x, torch.ones_like(x))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)
    with pytest.raises(TokenizerMismatchError):
        load_teacher(tmp_path / "base", tokenizer=make_tokenizer([f"v{i}" for i in range(37)]))


@pytest.mark.parametrize("end", ["strip", "append"])
def test_teacher_reads_sources_as_its_own_layout_ends_them(end):
    """A student reading x [EOS] and a teacher fine-tuned on [BOS] x y (an imported family's layout):
    the teacher sees [BOS] x y, not [BOS] x [EOS] y; and the other way round for an encore-layout teacher
    under a student whose sources have no EOS."""
    teacher = FeatureTeacher()
    teacher.bos_id, teacher.eos_id, teacher.pad_id, teacher.source_end = BOS, EOS, PAD, end
    x, y = [[5, 6, 7], [8]], [[9, 10], [11]]
    rows = [(xs + [EOS] if end == "strip" else xs) for xs in x]
    src = torch.tensor([r + [PAD] * (4 - len(r)) for r in rows])
    src_mask = (torch.arange(4)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    tgt = torch.tensor([[9, 10], [11, -100]])
    tgt_mask = torch.tensor([[1, 1], [1, 0]])
    out = aligned_teacher_logits(teacher, src, src_mask, tgt, tgt_mask, vocab_size=48)
    for b in range(2):
        seen = [BOS, *x[b]] + ([EOS] if end == "append" else [])  # what the teacher's own layout reads
        for j in range(len(y[b])):
            assert out[b, j, :4].tolist() == features(seen + y[b][:j])


def test_load_encore_decoder_only_teacher(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig.preset(
        "deconly-tiny", vocab_size=40, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128, n_decoder_layers=2
    )
    DecoderOnly(config).save_pretrained(tmp_path / "dec")
    teacher = load_teacher(tmp_path / "dec")
    src, src_mask, labels, tgt_mask = mixed_batch()
    out = aligned_teacher_logits(teacher, src, src_mask, labels, tgt_mask, vocab_size=48)
    with torch.no_grad():
        for b in range(3):
            x = src[b, : int(src_mask[b].sum())].tolist()
            y = labels[b, : int(tgt_mask[b].sum())].tolist()
            ref = teacher.model(torch.tensor([[config.bos_token_id] + x + y])).logits[0][1:]
            torch.testing.assert_close(
                out[b, : len(y), :40], ref[len(x) - 1 : len(x) - 1 + len(y)], atol=1e-4, rtol=1e-4
            )
    y, y_mask = generate_teacher_targets(teacher, src, src_mask, max_new_tokens=5)
    greedy = aligned_teacher_logits(teacher, src, src_mask, y, y_mask).argmax(-1)
    assert torch.equal(greedy[y_mask.bool()], y[y_mask.bool()])
    tiny_student().save_pretrained(tmp_path / "ed")  # an encoder-decoder teacher: tests/test_kd.py
    assert type(load_teacher(tmp_path / "ed")).__name__ == "Seq2SeqTeacher"
    # an encore-layout teacher ([BOS] x [EOS] y) reads a student's x [EOS] as it is; one of an imported
    # family's layout ([BOS] x y) reads it without the EOS
    assert load_teacher(tmp_path / "dec", student_sources_end_in_eos=True).source_end == "keep"
    DecoderOnly(config.replace(source_layout="bos")).save_pretrained(tmp_path / "imported")
    assert load_teacher(tmp_path / "imported", student_sources_end_in_eos=True).source_end == "strip"
    assert load_teacher(tmp_path / "dec", student_sources_end_in_eos=False).source_end == "append"


def test_generated_targets_are_the_teachers_greedy_choices():
    teacher = Teacher(tiny_llama(), tokenizer=make_tokenizer(WORDS), bos_id=BOS, valid_vocab=40)
    src, src_mask, _, _ = mixed_batch()
    y, y_mask = generate_teacher_targets(teacher, src, src_mask, max_new_tokens=6)
    assert y.shape[0] == 3 and y.shape[1] <= 6 and (y[y_mask.bool()] < 40).all()
    logits = aligned_teacher_logits(teacher, src, src_mask, y, y_mask)
    m = y_mask.bool()
    assert torch.equal(logits.argmax(-1)[m], y[m])
