"""`encore chat --model M`: a conversation in the terminal, replies streamed as they are generated.

Each turn the whole conversation goes through the checkpoint's chat template (`--chat-template FILE`
to replace it): an encoder-decoder re-encodes it and its decoder writes the reply; a decoder-only model
continues it. `/reset` clears the history, `/exit` (or Ctrl-D) ends the session; Ctrl-C while a reply
streams stops that reply and keeps the session (the partial reply stays in the history).
"""

from __future__ import annotations

import argparse
import sys
import time

from encore.cli.common import add_model_args, add_quantize_flag, load_for_inference, text_only

HELP = "/reset clears the conversation, /exit ends it; Ctrl-C stops a reply"


def configure(p: argparse.ArgumentParser) -> None:
    add_model_args(p, training=False)
    p.add_argument("--system", default=None, help="a system message opening the conversation")
    p.add_argument("--chat-template", default=None, metavar="FILE", help="a Jinja chat template (default: the model's)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="reply length at most (%(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (%(default)s)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    add_quantize_flag(p)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--stats", action="store_true", help="after each reply: time to first token and tokens/s")


def run(args: argparse.Namespace) -> int:
    from encore.tokenizer import chat_ids, read_template

    template = read_template(args.chat_template)
    quantize = None if args.quantize == "none" else args.quantize
    model = text_only(
        load_for_inference(
            args.model,
            args.tokenizer,
            args.device,
            quantize,
            kv_cache_dtype=args.kv_cache_dtype,
            prefill_products=args.prefill_products,
        ),
        args.model,
        "chat",
    )
    tokenizer = model.tokenizer
    if template is None and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"--model {args.model} has no chat template; pass --chat-template FILE")
    opening = [{"role": "system", "content": args.system}] if args.system else []
    history = list(opening)
    print(f"encore chat: {args.model} ({model.config.arch}). {HELP}", flush=True)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = list(opening)
            print("(conversation cleared)", flush=True)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": line})
        ids = chat_ids(tokenizer, history, template)
        reply = _stream_reply(model, ids, args)
        history.append({"role": "assistant", "content": reply})


def _stream_reply(model, ids: list[int], args: argparse.Namespace) -> str:
    """Generate and print a reply token by token; Ctrl-C stops it. The reply's text."""
    import torch

    from encore.infer.generate import generate_stream

    tokenizer, eos = model.tokenizer, set(model.config.eos_token_ids)
    input_ids = torch.tensor([ids], device=model.embed.weight.device)
    sampling = dict(do_sample=args.temperature > 0, temperature=args.temperature or 1.0, top_p=args.top_p)
    tokens: list[int] = []
    shown, start, first = "", time.perf_counter(), None
    try:
        for step in generate_stream(model, input_ids, max_new_tokens=args.max_new_tokens, seed=args.seed, **sampling):
            token = int(step[0])
            if token in eos:
                break
            first = first or time.perf_counter()
            tokens.append(token)
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # a multi-byte character not complete yet
                sys.stdout.write(text[len(shown) :])
                sys.stdout.flush()
                shown = text
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    sys.stdout.write(text[len(shown) :])  # what waited for the rest of a character that never came
    print(flush=True)
    if args.stats and first is not None:
        rate = (len(tokens) - 1) / max(time.perf_counter() - first, 1e-9)
        print(f"({first - start:.2f} s to the first token, {rate:.1f} tokens/s)", flush=True)
    return text
