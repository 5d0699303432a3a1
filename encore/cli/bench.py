"""`encore bench`: flags -> `BenchConfig` -> `run_bench` (or a report re-drawn from a saved JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from encore.bench import BenchConfig, format_report, plot, run_bench, validate_bench_json
from encore.bench.serving import ServeBenchConfig, run_serve_bench
from encore.bench.vision import VisionBenchConfig, run_vision_bench
from encore.cli.common import add_kv_cache_dtype_flag, add_prefill_products_flag, from_args


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Compare an encoder-decoder with a decoder-only model of matched size on this machine: time to first "
        "token, decode and end-to-end tokens/s, peak memory, KV cache, and the cost model's prediction. "
        "With no flags: encdec-330m vs deconly-330m at 512 -> 128, batch 1, plus an input-length sweep."
    )
    d = BenchConfig()
    parser.add_argument("--model", default=d.model, help="preset, config .json or checkpoint dir (%(default)s)")
    parser.add_argument("--baseline", default=d.baseline, help="the same, or 'none' (%(default)s)")
    parser.add_argument("--input-len", type=int, nargs="+", default=list(d.input_lens), help="input tokens (512)")
    parser.add_argument("--output-len", type=int, default=d.output_len, help="generated tokens (%(default)s)")
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=list(d.batch_sizes),
        help="concurrent requests through encore.Engine, e.g. 1 8 32 (anchors: one static batch; default 1)",
    )
    parser.add_argument(
        "--quantize",
        nargs="+",
        choices=["none", "int8", "int4"],
        default=None,
        help="encore models at each: 'none' (fp32 on CPU, bf16 on CUDA), 'int8' and / or 'int4' (CPU; default none; "
        "--serve: the servers' one setting, default int8 on CPU)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default=d.device)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed repetitions per point (%(default)s)")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="untimed runs per full point (%(default)s)")
    parser.add_argument(
        "--sweep", type=int, nargs="*", help="quick input-length sweep (default: 128..2048 on CPU, ..8192 on CUDA)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="measure only --input-len")
    parser.add_argument("--sweep-output-len", type=int, default=d.sweep_output_len, help="(%(default)s)")
    parser.add_argument("--sweep-repeats", type=int, default=d.sweep_repeats, help="(%(default)s)")
    _configure_anchors(parser)
    _configure_machine(parser)
    _configure_chat(parser)
    _configure_kernels(parser, d)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--from-json", metavar="PATH", help="measure nothing: print the report and draw --plot from a saved JSON"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="build every model in this process (peak memory then counts them all)"
    )
    _configure_serve(parser)
    _configure_vision(parser)
    parser.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc's malloc as it is in the workers (default: keep freed memory for reuse, as a deployment "
        "should: encore.infer.memory)",
    )


def _configure_anchors(parser: argparse.ArgumentParser) -> None:
    """The other engines timed beside encore on the same weights or shapes."""
    parser.add_argument(
        "--backend",
        choices=["engine", "onnx"],
        default="engine",
        help="onnx: also time the models exported to ONNX (onnxruntime, at each --quantize) beside encore's engine, "
        "which always runs (pip install 'encore[onnx]')",
    )
    parser.add_argument("--vs-hf", action="store_true", help="also time HF T5 / Llama of the same shapes")
    parser.add_argument("--audio", help="a Whisper model: the file whose first 30 s are timed (default: noise)")
    anchors = {
        "--vs-ct2": "also time CTranslate2 running a T5 of the encoder-decoder's shape, at each --quantize (pip "
        "install 'encore[anchors]')",
        "--vs-llamacpp": "also time llama.cpp on the decoder-only model's own weights, written as GGUF: F32 / Q8_0 / "
        "Q4_0 at --quantize none / int8 / int4, batch 1 (pip install 'encore[llamacpp]', builds llama.cpp)",
        "--vs-whispercpp": "a Whisper model: also time whisper.cpp on its own weights, written as its ggml file: "
        "F16 / Q8_0 / Q4_0 at --quantize none / int8 / int4 (pip install 'encore[whispercpp]')",
    }
    for flag, text in anchors.items():
        parser.add_argument(flag, action="store_true", help=text)


def _configure_machine(parser: argparse.ArgumentParser) -> None:
    """Where results go, and the machine's numbers the cost model uses."""
    parser.add_argument("--json", metavar="PATH", help="results ('' to skip; bench.json, --serve: bench_serve.json)")
    parser.add_argument("--plot", metavar="PATH", help="plot ('' to skip; bench.png, --serve: bench_serve.png)")
    parser.add_argument("--peak-gflops", type=float, help="cost model FLOP/s in GFLOP/s (default: probe)")
    parser.add_argument("--bandwidth-gbs", type=float, help="cost model memory bandwidth in GB/s (default: probe)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--cpu-linear",
        choices=["onednn", "aten"],
        help="encore's fp32 CPU projection kernel ('aten' = F.linear, torch's BLAS; default: onednn on x86-64, "
        "else aten)",
    )


def _configure_chat(parser: argparse.ArgumentParser) -> None:
    """--workload chat and its conversation."""
    parser.add_argument(
        "--workload",
        choices=["single", "chat"],
        default="single",
        help="chat: a scripted conversation (--turns, --user-len, --reply-len), time to first token per turn and "
        "total interaction latency, the decoder-only model with and without prefix reuse",
    )
    parser.add_argument("--turns", type=int, default=8, help="--workload chat: turns (%(default)s)")
    parser.add_argument(
        "--user-len", type=int, default=64, help="--workload chat: new user tokens per turn (%(default)s)"
    )
    parser.add_argument(
        "--reply-len", type=int, default=64, help="--workload chat: reply tokens per turn (%(default)s)"
    )


def _configure_kernels(parser: argparse.ArgumentParser, d: BenchConfig) -> None:
    """Decoding and kernel settings of the encore models."""
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--num-beams",
        type=int,
        default=d.num_beams,
        help="> 1: time beam search of this width (exactly --output-len steps; --vs-ct2: beam_size)",
    )
    add_prefill_products_flag(parser)
    add_kv_cache_dtype_flag(parser)
    parser.add_argument(
        "--profile-prefill",
        action="store_true",
        help="also split one prefill of each encore model into products, attention, other work and overhead, "
        "each against the probed peak (the report and the JSON's prefill_profile)",
    )


def _configure_vision(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "--vision: what image tokens cost",
        "first-token latency, decode time and K/V memory of the encoder-decoder VLM (--model) against the "
        "decoder-only VLM (--baseline), random weights, at each --image-keep (question: 32 tokens; --output-len new)",
    )
    group.add_argument("--vision", default=None, help="image tower preset or VisionConfig .json (e.g. clip-vit-l-336)")
    group.add_argument(
        "--image-keep", type=float, nargs="+", default=[1.0, 0.33], help="fractions of image tokens kept"
    )
    group.add_argument("--selection", choices=["variance", "uniform", "learned"], default="variance")


def vision_config_from_args(args: argparse.Namespace) -> VisionBenchConfig:
    return VisionBenchConfig(
        model=args.model,
        baseline=args.baseline,
        vision=args.vision,
        image_keeps=tuple(args.image_keep),
        selection=args.selection,
        output_len=args.output_len,
        repeats=args.repeats,
        device=args.device,
        seed=args.seed,
        json_path=(args.json if args.json is not None else "bench_vision.json") or None,
    )


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    s = ServeBenchConfig()
    group = parser.add_argument_group(
        "--serve: capacity of `encore serve`",
        "start a server per model (--model, --baseline; random weights) at the same KV budget and drive it over "
        "loopback with a seeded Poisson workload of prompts up to --input-len tokens and completions up to "
        "--output-len (pip install 'encore[serve]')",
    )
    group.add_argument("--serve", action="store_true", help="measure the server instead of single generations")
    group.add_argument("--kv-budget-mb", type=float, default=s.kv_budget_mb, help="each server's (%(default)s)")
    group.add_argument("--max-batch", type=int, default=s.max_batch, help="each server's (%(default)s)")
    group.add_argument("--serve-requests", type=int, default=s.requests, help="measured requests (%(default)s)")
    group.add_argument(
        "--serve-rate",
        type=float,
        nargs="+",
        default=list(s.rates),
        help="offered loads, requests/s: one run each (default: 1 4)",
    )
    group.add_argument(
        "--serve-spread", type=float, default=s.spread, help="lengths uniform in [(1-spread) L, L] (%(default)s)"
    )
    group.add_argument("--serve-timeout", type=float, default=s.timeout_s, help="seconds per model (%(default)s)")
    group.add_argument(
        "--prefill-chunk", type=int, default=None, metavar="N", help="each server's --prefill-chunk (default: none)"
    )


def serve_config_from_args(args: argparse.Namespace) -> ServeBenchConfig:
    quantize = args.quantize or (["int8"] if args.device == "cpu" else ["none"])
    if len(quantize) > 1:
        raise ValueError("--serve takes one --quantize setting (the servers' own)")
    return ServeBenchConfig(
        model=args.model,
        baseline=None if str(args.baseline).lower() in ("", "none") else args.baseline,
        quantize=None if quantize[0] == "none" else quantize[0],
        kv_cache_dtype=args.kv_cache_dtype,
        device=args.device,
        kv_budget_mb=args.kv_budget_mb,
        max_batch=args.max_batch,
        requests=args.serve_requests,
        warmup=args.warmup,
        rates=tuple(args.serve_rate),
        input_len=args.input_len[0],
        output_len=args.output_len,
        spread=args.serve_spread,
        prefill_chunk=args.prefill_chunk,
        seed=args.seed,
        timeout_s=args.serve_timeout,
        json_path=(args.json if args.json is not None else "bench_serve.json") or None,
        plot_path=(args.plot if args.plot is not None else "bench_serve.png") or None,
        peak_flops=None if args.peak_gflops is None else args.peak_gflops * 1e9,
        mem_bandwidth=None if args.bandwidth_gbs is None else args.bandwidth_gbs * 1e9,
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Flags of BenchConfig's names map one to one; these are the ones that differ."""
    return from_args(
        BenchConfig,
        args,
        baseline=None if str(args.baseline).lower() in ("", "none") else args.baseline,
        input_lens=tuple(args.input_len),
        quantize=tuple(dict.fromkeys(None if q == "none" else q for q in args.quantize or ["none"])),
        batch_sizes=tuple(args.batch_size),
        sweep=() if args.no_sweep else (tuple(args.sweep) if args.sweep is not None else None),
        json_path=(args.json if args.json is not None else "bench.json") or None,
        plot_path=(args.plot if args.plot is not None else "bench.png") or None,
        peak_flops=None if args.peak_gflops is None else args.peak_gflops * 1e9,
        mem_bandwidth=None if args.bandwidth_gbs is None else args.bandwidth_gbs * 1e9,
        progress=False if args.quiet else None,
        isolate=not args.in_process,
        retain_memory=not args.malloc_default,
        onnx=args.backend == "onnx",
    )


def run(args: argparse.Namespace) -> int:
    if args.from_json:
        path = Path(args.from_json)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no bench JSON here") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        serving = doc.get("kind") == "serve"
        plot_path = args.plot if args.plot is not None else ("bench_serve.png" if serving else "bench.png")
        if serving:
            from encore.bench.serving_report import format_serve_report, plot_serve

            if plot_path:
                plot_serve(doc, plot_path)
            print(format_serve_report(doc))
            return 0
        validate_bench_json(doc)
        if plot_path:
            plot(doc, plot_path)
        print(format_report(doc))
        return 0
    if args.vs_whispercpp and not _is_speech(args.model):
        raise ValueError(f"--vs-whispercpp times a Whisper model; --model {args.model} is not a speech model")
    if args.serve:
        run_serve_bench(serve_config_from_args(args))
        return 0
    if args.workload == "chat":
        return run_chat(args)
    if args.vision:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        run_vision_bench(vision_config_from_args(args))
        return 0
    if _is_speech(args.model):
        return run_speech(args)
    run_bench(config_from_args(args))
    return 0


def _is_speech(spec: str) -> bool:
    from encore.convert import resolve_model

    try:
        return resolve_model(spec)[0].encoder_input == "audio"
    except (ValueError, FileNotFoundError):
        return False  # the text bench names what is wrong with the spec


def run_speech(args: argparse.Namespace) -> int:
    """A Whisper model: first token, decode rate and real-time factor per 30-s window (`encore.bench.speech`)."""
    from encore.bench.speech import SpeechBenchConfig, run_speech_bench

    if args.baseline not in ("none", None) and args.baseline != BenchConfig().baseline:
        raise ValueError("a speech model is benchmarked alone or against CTranslate2 (--vs-ct2): --baseline none")
    cfg = SpeechBenchConfig(
        model=args.model,
        quantize=args.quantize or ["none"],
        output_len=args.output_len,
        repeats=args.repeats,
        audio=args.audio,
        vs_ct2=args.vs_ct2,
        vs_hf=args.vs_hf,
        vs_whispercpp=args.vs_whispercpp,
        onnx=args.backend == "onnx",
        threads=args.threads,
        seed=args.seed,
        json_path="bench_speech.json" if args.json is None else args.json,
    )
    run_speech_bench(cfg)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """`--workload chat`: the conversation on both architectures; a table, bench_chat.json and a plot."""
    from encore.bench.chat import ChatBenchConfig, format_chat_report, plot_chat, run_chat_bench

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    quantize = [q for q in (args.quantize or ["none"]) if q != "none"]
    if len(args.quantize or []) > 1:
        raise ValueError("--workload chat takes one --quantize setting")
    cfg = ChatBenchConfig(
        model=args.model,
        baseline=args.baseline,
        turns=args.turns,
        user_len=args.user_len,
        reply_len=args.reply_len,
        quantize=quantize[0] if quantize else None,
        repeats=args.repeats,
        seed=args.seed,
        peak_gflops=args.peak_gflops,
    )
    data = run_chat_bench(cfg)
    json_path = args.json if args.json is not None else "bench_chat.json"
    plot_path = args.plot if args.plot is not None else "bench_chat.png"
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=2) + "\n")
    if plot_path:
        plot_chat(data, plot_path)
    print(format_chat_report(data))
    return 0
