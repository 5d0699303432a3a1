"""`encore serve` over real HTTP on loopback: a server process on a tiny checkpoint, driven by httpx
and the `openai` client. Completions and their usage, streaming (the openai client and raw SSE),
16 concurrent clients equal to solo `generate`, n samples, a disconnect freeing its slot, 429 past
the queue, bad input naming the field while the others are served, SIGTERM exiting 0."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from conftest import make_model

from encore import load, optimize
from encore.data.collate import prompt_ids
from encore.tokenizer import special_ids, train_tokenizer

pytest.importorskip("fastapi")
NAME = "tiny-code2doc"
LONG = 480  # tokens of a request that must still be running when the test acts on it
WORDS = "the of a list returns value given string number file path read write open close sort key".split()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(200)]
    tokenizer = train_tokenizer(texts, vocab_size=420)
    pad, bos, eos = special_ids(tokenizer)
    model = make_model("encdec", pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, max_seq_len=576)
    model.tokenizer = tokenizer
    directory = tmp_path_factory.mktemp("serve") / "ckpt"
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reference(checkpoint):
    """Greedy text of a prompt from the checkpoint alone, optimized as the server optimizes it."""
    model = optimize(load(checkpoint))

    def run(prompt: str, max_tokens: int) -> tuple[str, list[int]]:
        ids = prompt_ids(model.tokenizer, prompt, model.config)
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)[0].tolist()
        eos = model.config.eos_token_id
        tokens = out[: out.index(eos) + 1] if eos in out else out
        return model.tokenizer.decode(tokens, skip_special_tokens=True), tokens

    run.model = model
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`encore serve` in a subprocess; `url` once /health answers."""

    def __init__(self, checkpoint, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "encore", "serve", "--model", str(checkpoint), "--port", str(self.port)]
        command += ["--served-model-name", NAME, "--max-input-len", "64", "--no-access-log", "--log-level", "warning"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the test process runs torch too: no spin-waiting rivals
        self.proc = subprocess.Popen([*command, *flags], env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not answer /health within 120 s")

    def post(self, **body) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/completions", json=body, timeout=60)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.metric("encore_slots_in_use") > 0:
            assert time.monotonic() < deadline, "slots still in use"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def server(checkpoint):
    s = Server(checkpoint, "--max-batch", "16", "--max-tokens-limit", str(LONG + 16), "--kv-budget-mb", "64")
    yield s
    assert s.stop() == 0


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_completion_has_openai_shape_text_and_usage(server, reference):
    prompt = "read the file and return its lines"
    r = server.post(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    text, tokens = reference(prompt, 12)
    assert body["object"] == "text_completion" and body["model"] == NAME and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["text"] == text
    assert choice["finish_reason"] == ("stop" if tokens[-1] == reference.model.config.eos_token_id else "length")
    prompt_tokens = len(prompt_ids(reference.model.tokenizer, prompt, reference.model.config))
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(tokens) - (choice["finish_reason"] == "stop"),
        "total_tokens": prompt_tokens + len(tokens) - (choice["finish_reason"] == "stop"),
    }
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == NAME
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["slots"] == 16


def test_streaming_with_the_openai_client_and_raw_sse(server, reference):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    prompt = "sort the list by key"
    text, tokens = reference(prompt, 16)
    chunks = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=16, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert len(chunks) >= len(text.split())  # streamed token by token, not in one piece
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        json={"prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": True},
        timeout=60,
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == text


def test_sixteen_concurrent_clients_get_their_solo_greedy_outputs(server, reference):
    prompts = [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(3 + i % 9)) for i in range(16)]
    lengths = [8 + (i * 5) % 40 for i in range(16)]
    expected = [reference(p, n)[0] for p, n in zip(prompts, lengths)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda pn: server.post(prompt=pn[0], max_tokens=pn[1], temperature=0), zip(prompts, lengths))
        )
    assert [r.status_code for r in responses] == [200] * 16
    assert [r.json()["choices"][0]["text"] for r in responses] == expected
    assert len(set(expected)) > 8  # varied prompts, varied outputs


def test_n_samples_and_prompt_lists(server):
    r = server.post(prompt=["open the file", "close it"], n=3, max_tokens=6, temperature=0.9, seed=11)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    again = server.post(prompt=["open the file", "close it"], n=3, max_tokens=6, temperature=0.9, seed=11).json()
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in choices]  # seeded: reproducible
    assert len({c["text"] for c in choices[:3]}) > 1  # seed + k per sample: different samples


def test_beam_search_requests_give_generates_beams_and_stream_as_one_chunk(server, reference):
    """num_beams (greedy over the beams) and n <= num_beams: the n best of `generate_beams` alone; a
    streamed beam request gets its text as one chunk when the search ends."""
    from encore.infer.generate import Beams, generate_beams

    model, prompt = reference.model, "sort the list by key and return it"
    ids = prompt_ids(model.tokenizer, prompt, model.config)
    tokens, _ = generate_beams(model, torch.tensor([ids]), None, 10, Beams(num_beams=4, num_return_sequences=2))
    eos = model.config.eos_token_id
    expected = [
        model.tokenizer.decode([t for t in row if t != eos], skip_special_tokens=True) for row in tokens.tolist()
    ]
    r = server.post(prompt=prompt, max_tokens=10, num_beams=4, n=2, length_penalty=1.0)
    assert r.status_code == 200, r.text
    assert [c["text"] for c in r.json()["choices"]] == expected
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", timeout=60,
        json={"prompt": prompt, "max_tokens": 10, "num_beams": 4, "stream": True},
    ) as streamed:  # fmt: skip
        chunks = [json.loads(e) for e in sse_events(streamed) if e != "[DONE]"]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"][0]["text"]]
    assert texts == [expected[0]] and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_logprobs_and_best_of(server, reference):
    """logprobs N: each token's log-prob and its N likeliest (greedy: the token is the likeliest), the
    one per generated token, in a stream too; best_of samples more and returns the n most likely."""
    prompt = "write the string to the file"
    r = server.post(prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == reference(prompt, 8)[0]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == r.json()["usage"]["completion_tokens"]
    for value, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        # (two byte pieces may both print as "\ufffd": a dict of alternatives may hold fewer than 3)
        assert 1 <= len(top) <= 3 and value <= 0.0 and abs(max(top.values()) - value) < 1e-5
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", timeout=60,
        json={"prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 0, "stream": True},
    ) as streamed:  # fmt: skip
        chunks = [json.loads(e)["choices"][0] for e in sse_events(streamed) if e != "[DONE]"]
    streamed_values = [v for c in chunks if c["logprobs"] for v in c["logprobs"]["token_logprobs"]]
    assert streamed_values == pytest.approx(lp["token_logprobs"], abs=1e-5)
    best = server.post(prompt=prompt, max_tokens=8, temperature=1.0, seed=3, n=2, best_of=4).json()
    assert [c["index"] for c in best["choices"]] == [0, 1] and best["choices"][0]["logprobs"] is None
    every = server.post(prompt=prompt, max_tokens=8, temperature=1.0, seed=3, n=4, logprobs=0).json()
    samples = every["choices"]
    mean = lambda c: sum(c["logprobs"]["token_logprobs"]) / max(1, len(c["logprobs"]["token_logprobs"]))
    ranked = sorted(samples, key=mean, reverse=True)  # the same seeds: best_of's candidates
    assert [c["text"] for c in best["choices"]] == [c["text"] for c in ranked[:2]]
    assert best["usage"] == every["usage"]  # best_of's discarded samples count, as OpenAI bills them


def long_prompt(reference) -> str:
    """A prompt whose greedy run does not reach EOS within LONG tokens (so it is still running when
    the test disconnects or shuts down)."""
    for i in range(40):
        prompt = " ".join(WORDS[(i + j * 5) % len(WORDS)] for j in range(6))
        _, tokens = reference(prompt, LONG)
        if len(tokens) == LONG and tokens[-1] != reference.model.config.eos_token_id:
            return prompt
    pytest.fail("no prompt of the tiny model runs LONG tokens without EOS")


def test_a_client_that_disconnects_frees_its_slot(server, reference):
    prompt = long_prompt(reference)
    cancelled = server.metric('encore_requests_total{outcome="cancelled"}')
    finished = server.metric('encore_requests_total{outcome="finished"}')
    for _ in range(3):  # a loaded machine may notice the disconnect only after all LONG tokens: try again
        with httpx.stream(
            "POST",
            f"{server.url}/v1/completions",
            json={"prompt": prompt, "max_tokens": LONG, "temperature": 0, "stream": True},
            timeout=60,
        ) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: ")
        server.wait_idle()
        if server.metric('encore_requests_total{outcome="finished"}') == finished:
            break
        finished = server.metric('encore_requests_total{outcome="finished"}')
    assert server.metric('encore_requests_total{outcome="cancelled"}') == cancelled + 1
    assert server.post(prompt="open", max_tokens=4, temperature=0).status_code == 200  # the server goes on


@pytest.mark.parametrize(
    "body,param,message",
    [
        (b'{"prompt": "x", ', None, "malformed JSON"),
        ({"prompt": "x " * 200}, "prompt", "limit is 64"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"prompt": "x", "max_tokens": 10_000}, "max_tokens", f"limit {LONG + 16}"),
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens", "valid integer"),
        ({"prompt": 5}, "prompt", "prompt"),
        ({"prompt": "x", "temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"prompt": "x", "top_p": 0}, "top_p", "greater than 0"),
        ({"prompt": "x", "stop": [""]}, "stop", "must not be empty"),
        ({"prompt": []}, "prompt", "empty list"),
        ({"prompt": "x", "model": "gpt-4"}, "model", "'gpt-4' is not served here"),
        ({"prompt": "x", "n": 99}, "n", "16 slots"),
        ({"max_tokens": 4}, "prompt", "Field required"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty", "greater than 0"),
        ({"prompt": "x", "no_repeat_ngram_size": -1}, "no_repeat_ngram_size", "greater than or equal to 0"),
        ({"prompt": "x", "target_lang": "fra_Latn"}, "target_lang", "not a language code"),
        ({"prompt": "x", "source_lang": "fra_Latn"}, "source_lang", "not a language code"),
        (b'{"prompt": "\\udcff"}', "prompt", "not valid Unicode text"),  # a lone surrogate: valid JSON
        (b'{"prompt": ["ok", "a\\ud800b"]}', "prompt[1]", "not valid Unicode text"),
        ({"prompt": "x", "frequency_penalty": 2.5}, "frequency_penalty", "less than or equal to 2"),
        ({"prompt": "x", "presence_penalty": -3}, "presence_penalty", "greater than or equal to -2"),
        ({"prompt": "x", "num_beams": 0}, "num_beams", "greater than or equal to 1"),
        ({"prompt": "x", "num_beams": 17}, "num_beams", "16 slots"),
        ({"prompt": "x", "num_beams": 2, "n": 3}, "n", "more than num_beams 2"),
        ({"prompt": "x", "num_beams": 2, "temperature": 0.7}, "temperature", "must be 0 or left out"),
        ({"prompt": "x", "num_beams": 2, "logprobs": 1}, "logprobs", "not given for beam search"),
        ({"prompt": "x", "num_beams": 2, "best_of": 3}, "best_of", "the beam width"),
        ({"prompt": "x", "logprobs": 21}, "logprobs", "less than or equal to 20"),
        ({"prompt": "x", "n": 3, "best_of": 2}, "best_of", "at least n 3"),
        ({"prompt": "x", "best_of": 2, "stream": True}, "best_of", "cannot be streamed"),
        ({"prompt": "x", "best_of": 17}, "best_of", "16 slots"),
        ({"prompt": "x", "echo": True}, "echo", "not supported"),
    ],
)
def test_bad_input_names_the_field_and_the_server_goes_on(server, body, param, message):
    kwargs = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    r = httpx.post(f"{server.url}/v1/completions", timeout=30, **kwargs)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"], error
    assert server.post(prompt="open", max_tokens=2, temperature=0).status_code == 200


def test_queue_full_gets_429_and_sigterm_ends_cleanly(checkpoint, reference):
    prompt = long_prompt(reference)
    s = Server(
        checkpoint, "--max-batch", "1", "--max-queue", "1", "--max-tokens-limit", str(LONG), "--shutdown-grace", "0.5"
    )
    body = {"prompt": prompt, "max_tokens": LONG, "temperature": 0, "stream": True}
    try:
        with (
            httpx.stream("POST", f"{s.url}/v1/completions", json=body, timeout=60) as running,
            httpx.stream("POST", f"{s.url}/v1/completions", json=body, timeout=60) as queued,
        ):
            lines = running.iter_lines()
            next(lines)  # the first request runs; the second waits for the slot
            r = s.post(prompt="open", max_tokens=2)
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert "--max-queue 1" in r.json()["error"]["message"]
            s.proc.send_signal(signal.SIGTERM)
            events = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
            ends = [json.loads(e)["choices"][0]["finish_reason"] for e in events if e != "[DONE]"]
            assert (
                events[-1] == "[DONE]" and ends[-1] == "length" and sse_events(queued)[-1] == "[DONE]"
            )  # cut cleanly, not dropped
        assert s.proc.wait(timeout=60) == 0
        with pytest.raises(httpx.TransportError):
            s.post(prompt="open", max_tokens=2)
    finally:
        s.stop()


def test_a_log_prob_of_minus_infinity_reads_minus_9999_in_both_shapes():
    """JSON has no infinity: a banned token's -inf log-prob (or NaN) is OpenAI's -9999 in both routes' shapes."""
    from encore.serve.logprobs import chat_logprobs, completion_logprobs

    class Tokenizer:
        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(97 + i) for i in ids)

    entries = [(0, -0.5, [(0, -0.5), (1, float("-inf"))]), (2, float("-inf"), [(3, float("nan"))])]
    completion = completion_logprobs(Tokenizer(), entries)
    assert completion["token_logprobs"] == [-0.5, -9999.0]
    assert completion["top_logprobs"] == [{"a": -0.5, "b": -9999.0}, {"d": -9999.0}]
    assert completion["text_offset"] == [0, 1]
    chat = chat_logprobs(Tokenizer(), entries)["content"]
    assert [c["logprob"] for c in chat] == [-0.5, -9999.0] and chat[1]["top_logprobs"][0]["logprob"] == -9999.0
    json.dumps(completion, allow_nan=False), json.dumps(chat, allow_nan=False)
