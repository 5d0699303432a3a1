"""Chat: `/v1/chat/completions` over real HTTP with the `openai` client (stream and not), the template
applied as transformers applies it, an API key, body limits, a model without a template, and
`encore chat` driven through a pseudo-terminal."""

import os
import pty
import select
import subprocess
import sys
import time

import httpx
import pytest
import torch
from test_serve import NAME, Server, checkpoint, free_port  # noqa: F401  (the fixture)

from encore import load, optimize
from encore.tokenizer import chat_ids

pytest.importorskip("fastapi")
TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
KEY = "sk-test-123"
MESSAGES = [{"role": "system", "content": "be short"}, {"role": "user", "content": "the list of a file"}]


@pytest.fixture(scope="module")
def chat_checkpoint(checkpoint, tmp_path_factory):  # noqa: F811
    """The serving tests' checkpoint with a chat template in its tokenizer."""
    model = load(checkpoint)
    model.tokenizer.chat_template = TEMPLATE
    directory = tmp_path_factory.mktemp("chat") / "ckpt"
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def server(chat_checkpoint):
    s = Server(chat_checkpoint, "--api-key", KEY, "--max-body-mb", "0.01", "--max-tokens-limit", "32")
    yield s
    assert s.stop() == 0


def greedy(directory, messages, max_tokens: int) -> str:
    model = optimize(load(directory))
    ids = chat_ids(model.tokenizer, messages)
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens)[0].tolist()
    eos = model.config.eos_token_id
    return model.tokenizer.decode(out[: out.index(eos)] if eos in out else out, skip_special_tokens=True)


def test_the_template_is_applied_as_transformers_applies_it(chat_checkpoint):
    tok = load(chat_checkpoint).tokenizer
    theirs = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
    assert chat_ids(tok, MESSAGES) == list(theirs)


def test_chat_with_the_openai_client_stream_and_not(server, chat_checkpoint):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    want = greedy(chat_checkpoint, MESSAGES, 16)
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=16, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == want
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens == len(
        chat_ids(load(chat_checkpoint).tokenizer, MESSAGES)
    )
    stream = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_completion_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert {c.object for c in chunks} == {"chat.completion.chunk"}  # OpenAI's shape of every chunk
    assert len({c.id for c in chunks}) == 1 and all(c.model == NAME for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_chat_logprobs_with_the_openai_client(server, chat_checkpoint):
    """`logprobs: true` + `top_logprobs`: OpenAI's chat shape, one entry per generated token, in the
    answer and in the stream's chunks; top_logprobs without logprobs is a 400 naming it."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    ask = dict(model=NAME, messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    reply = client.chat.completions.create(**ask)
    content = reply.choices[0].logprobs.content
    assert reply.choices[0].message.content == greedy(chat_checkpoint, MESSAGES, 8)
    assert len(content) == reply.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0.0 and len(item.top_logprobs) == 2 and bytes(item.bytes).decode() == item.token
        assert abs(item.top_logprobs[0].logprob - item.logprob) < 1e-5  # greedy: the likeliest
    chunks = list(client.chat.completions.create(**ask, stream=True))
    streamed = [i.logprob for c in chunks if c.choices and c.choices[0].logprobs for i in c.choices[0].logprobs.content]
    assert streamed == pytest.approx([i.logprob for i in content], abs=1e-5)
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": MESSAGES, "top_logprobs": 2}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_an_api_key_guards_every_route_but_health(server):
    url = server.url
    assert httpx.get(f"{url}/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.get(f"{url}/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES}, headers=headers)
        assert r.status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_limits_answer_413_and_400_naming_them(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    big = [{"role": "user", "content": "word " * 5000}]
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": big}, headers=auth)
    assert r.status_code == 413 and "limit is 10485" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 99}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": []}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]},
                   headers=auth)  # fmt: skip
    assert r.status_code == 400


def test_a_model_without_a_template_gets_a_400(checkpoint):  # noqa: F811
    from fastapi.testclient import TestClient

    from encore.serve import ServerConfig, build_app

    model = optimize(load(checkpoint))
    app, _ = build_app(ServerConfig(model=str(checkpoint), max_input_len=64, max_tokens=8, kv_budget_mb=16), model)
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert r.status_code == 400 and "has no chat template" in r.json()["error"]["message"]
        assert "--chat-template" in r.json()["error"]["message"]
        r = client.options(
            "/v1/models", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in r.headers  # no CORS unless asked


def _read_until(fd: int, marker: bytes, timeout: float = 120) -> bytes:
    out, deadline = b"", time.monotonic() + timeout
    while marker not in out:
        assert time.monotonic() < deadline, f"no {marker!r} in {out[-300:]!r}"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            out += os.read(fd, 4096)
    return out


def test_generate_with_chat_lays_inputs_out_by_the_template(chat_checkpoint, tmp_path, capsys):
    """`encore generate --chat`: each input is one user message through the chat template (or
    `--chat-template FILE`), the tokens `generate` gives for those ids; refused in one line where it
    cannot apply."""
    from encore.cli import main

    question = [{"role": "user", "content": "the list of a file"}]
    assert main(["generate", "--model", str(chat_checkpoint), "--chat", "--input", "the list of a file",
                 "--max-new-tokens", "6"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == greedy(chat_checkpoint, question, 6).strip()
    other = tmp_path / "template.jinja"
    other.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert main(["generate", "--model", str(chat_checkpoint), "--chat", "--chat-template", str(other),
                 "--input", "the list of a file", "--max-new-tokens", "6"]) == 0  # fmt: skip
    model = optimize(load(chat_checkpoint))
    ids = chat_ids(model.tokenizer, question, other.read_text())
    out = model.generate(torch.tensor([ids]), max_new_tokens=6)[0].tolist()
    out = out[: out.index(model.config.eos_token_id)] if model.config.eos_token_id in out else out
    assert capsys.readouterr().out.strip() == model.tokenizer.decode(out, skip_special_tokens=True).strip()
    assert main(["generate", "--model", str(chat_checkpoint), "--chat-template", str(other), "--input", "x"]) != 0
    assert "error: --chat-template goes with --chat" in capsys.readouterr().err
    too_long = ["--chat", "--input", "the list", "--max-source-len", "3"]
    assert main(["generate", "--model", str(chat_checkpoint), *too_long]) != 0
    assert "input 1: its chat prompt is" in capsys.readouterr().err


def test_encore_chat_in_a_terminal(chat_checkpoint):
    primary, secondary = pty.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "encore", "chat", "--model", str(chat_checkpoint), "--max-new-tokens", "8",
               "--system", "be short"]  # fmt: skip
    proc = subprocess.Popen(command, stdin=secondary, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    try:
        _read_until(primary, b"> ")
        os.write(primary, b"the list of a file\n")
        reply = _read_until(primary, b"> ").decode(errors="replace")
        want = greedy(chat_checkpoint, MESSAGES, 8)
        assert want.strip() in reply.replace("\r", "")
        os.write(primary, b"/reset\n")
        assert b"conversation cleared" in _read_until(primary, b"> ")
        os.write(primary, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def _one(server, i: int) -> int:
    """One soak request of kind i % 5: plain, streamed to the end, streamed then dropped, cut by the
    client's timeout, or bad input. The HTTP status (0 when the client gave up)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": f"the list {i} of a file"}], "max_tokens": 24, "temperature": 1,
            "seed": i}  # fmt: skip
    kind = i % 5
    try:
        if kind == 0:
            return httpx.post(url, json=body, headers=auth, timeout=60).status_code
        if kind in (1, 2):
            with httpx.stream("POST", url, json={**body, "stream": True}, headers=auth, timeout=60) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if kind == 2 and n == 1:
                        break  # the client goes away mid-stream
                return r.status_code
        if kind == 3:
            return httpx.post(url, json=body, headers=auth, timeout=0.05).status_code
        bad = [{"messages": "hi"}, {"messages": [], "max_tokens": 4}, {"messages": body["messages"], "n": 0}]
        return httpx.post(url, json=bad[i % 3], headers=auth, timeout=60).status_code
    except httpx.TimeoutException:
        return 0


@pytest.mark.slow
def test_soak_leaves_no_slot_or_memory_behind(server):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # warm-up: allocator pools and caches reach their working size
        list(pool.map(lambda i: _one(server, i), range(40)))
    rss = _rss_mb(server.proc.pid)
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: _one(server, i), range(300)))
    assert statuses.count(200) >= 150 and all(s in (0, 200, 400) for s in statuses), sorted(set(statuses))
    deadline = time.monotonic() + 60
    while _metric(server, "encore_slots_in_use") > 0 or _metric(server, "encore_kv_cache_bytes_in_use") > 0:
        assert time.monotonic() < deadline, "slots or K/V still in use after the soak"
        time.sleep(0.1)
    assert _rss_mb(server.proc.pid) - rss < 64  # MiB: the stated bound for 300 requests
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)  # fmt: skip
    assert r.status_code == 200  # and it still serves


def _browser() -> str | None:
    import shutil

    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


class Browser:
    """A headless browser driven over the DevTools protocol (a websocket): open a page, read its DOM,
    take a screenshot; real time, so a streamed reply has the time it needs."""

    def __init__(self, profile) -> None:
        self.port = free_port()
        command = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                   f"--remote-debugging-port={self.port}", "--window-size=1100,720", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=1).json()
                self.ws = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
                return
            except (httpx.TransportError, StopIteration, ValueError):
                assert time.monotonic() < deadline, "the browser did not open its DevTools port"
                time.sleep(0.2)

    def run(self, url: str, ready_js: str, timeout: float = 60, screenshot=None) -> str:
        """Open `url`, wait until `ready_js` is truthy, return `document.body.innerHTML`."""
        import asyncio
        import base64
        import json

        import websockets

        async def go() -> str:
            async with websockets.connect(self.ws, max_size=None) as ws:
                ids = iter(range(1, 10**6))

                async def call(method, **params):
                    i = next(ids)
                    await ws.send(json.dumps({"id": i, "method": method, "params": params}))
                    while True:
                        message = json.loads(await ws.recv())
                        if message.get("id") == i:
                            return message.get("result", {})

                async def value(expression):
                    result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
                    return result.get("result", {}).get("value")

                await call("Page.navigate", url=url)
                deadline = time.monotonic() + timeout
                while not await value(ready_js):
                    assert time.monotonic() < deadline, await value("document.body.innerHTML")
                    await asyncio.sleep(0.2)
                if screenshot is not None:
                    shot = await call("Page.captureScreenshot", format="png")
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                return await value("document.body.innerHTML")

        return asyncio.run(go())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.mark.skipif(_browser() is None, reason="no headless browser installed (Debian: apt install chromium)")
def test_the_chat_page_streams_a_reply_in_a_real_browser(chat_checkpoint, tmp_path):
    pytest.importorskip("websockets")
    s = Server(chat_checkpoint, "--max-tokens-limit", "32")
    browser = Browser(tmp_path / "profile")
    try:
        url = f"{s.url}/?temperature=0&max_tokens=8&system=be%20short&q=the%20list%20of%20a%20file"
        shown = browser.run(url, "document.querySelector('.stats') !== null")
    finally:
        browser.close()
        assert s.stop() == 0
    assert '<div class="msg user">the list of a file</div>' in shown, shown
    want = greedy(chat_checkpoint, MESSAGES, 8)
    assert f'<div class="msg assistant">{want}</div>' in shown, (want, shown)
    assert "first token" in shown and "tokens/s" in shown, shown
