"""How big each `encore reproduce --scale` is: model shapes, steps, data and evaluation sizes.

- `smoke`: every claim end to end in minutes (tests run it): tiny shapes, a handful of steps. Its
  verdicts mean nothing; it proves the pipeline.
- `tiny`: the committed report (docs/reproduce/): ~1-8M-parameter models, a few hundred steps each,
  <= 90 minutes on 2 CPU cores.
- `330m`: the paper's scale (encdec-330m / deconly-330m), for a GPU machine; expected time in REPORT.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scale:
    name: str
    # text models: d_model etc. shared by both architectures; layers per architecture / split
    shape: dict[str, Any]
    layers: int  # total layers of every text model (encoder + decoder, or decoder-only)
    pretrain_steps: int
    pretrain_seq_len: int
    pretrain_batch_size: int
    finetune_steps: int
    batch_size: int
    eval_limit: int  # validation examples scored per task
    tasks: tuple[str, ...]  # the architecture / split claims' tasks
    # kd: a larger decoder-only teacher trained longer; the student is the pretrained encdec of `shape`
    teacher_shape: dict[str, Any]
    teacher_layers: int
    teacher_steps: int
    kd_labeled: tuple[int, ...]  # labelled-set sizes N, smallest first
    kd_pool: int  # training sources of which N carry gold targets; the teacher labels the rest
    kd_steps: int  # the kd claim's student runs: long enough for the student to learn from the pool
    # long_context: evaluate the pretrained encoder-decoder at these input lengths
    long_lengths: tuple[int, int]
    long_batches: int
    # vision
    vision_steps: int
    vision_train_size: int
    # efficiency: the bench's models and lengths
    bench_models: tuple[str, str]
    bench_input_len: int
    bench_output_len: int
    bench_repeats: int
    expected_minutes: str
    # scale (the paper's open check 1): the presets encdec-N / deconly-N benched, and the serving load
    scale_sizes: tuple[str, ...] = ("330m", "1b", "3b", "10b")
    scale_serving_batch: int = 4
    scale_repeats: int = 1
    scale_quantize: tuple[str, ...] = ("int8", "int4")
    scale_bench_flags: tuple[str, ...] = ()  # more `encore bench` flags (smoke: one process, no warm-up)
    finetune_limit: int | None = None  # training examples a fine-tune reads (smoke: a few steps' worth, not a split)
    task_options: dict[str, list[str]] = field(default_factory=dict)


_TINY_SHAPE = dict(d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=512, max_seq_len=2048)
_SMOKE_SHAPE = dict(d_model=32, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_seq_len=2048)
_TASK_OPTIONS = {"addition": ["--task-option", "digits=2"], "code2doc": []}

SCALES: dict[str, Scale] = {
    "smoke": Scale(
        "smoke",
        shape=_SMOKE_SHAPE,
        layers=3,
        pretrain_steps=4,
        pretrain_seq_len=64,
        pretrain_batch_size=4,
        finetune_steps=4,
        batch_size=4,
        eval_limit=8,
        tasks=("addition", "code2doc"),
        teacher_shape=dict(_SMOKE_SHAPE, d_model=48),
        teacher_layers=3,
        teacher_steps=6,
        kd_labeled=(8,),
        kd_pool=32,
        kd_steps=4,
        long_lengths=(64, 256),
        long_batches=1,
        vision_steps=3,
        vision_train_size=16,
        bench_models=("encdec-tiny", "deconly-tiny"),
        bench_input_len=64,
        bench_output_len=8,
        bench_repeats=1,
        expected_minutes="<= 10 on 2 CPU cores",
        task_options=_TASK_OPTIONS,
        finetune_limit=64,
        scale_sizes=("tiny",),
        scale_serving_batch=2,
        scale_quantize=("int8",),
        scale_bench_flags=("--in-process", "--warmup", "0"),
    ),
    "tiny": Scale(
        "tiny",
        shape=_TINY_SHAPE,
        layers=6,
        pretrain_steps=80,
        pretrain_seq_len=512,
        pretrain_batch_size=16,
        finetune_steps=200,
        batch_size=32,
        eval_limit=300,
        tasks=("addition", "code2doc"),
        teacher_shape=dict(_TINY_SHAPE, d_model=256, mlp_dim=1024, n_heads=8, n_kv_heads=4),
        teacher_layers=8,
        teacher_steps=800,
        kd_labeled=(200, 1600),
        kd_pool=6400,
        kd_steps=600,
        long_lengths=(512, 2048),
        long_batches=8,
        vision_steps=200,
        vision_train_size=5_000,
        bench_models=("encdec-330m", "deconly-330m"),
        bench_input_len=512,
        bench_output_len=128,
        bench_repeats=3,
        expected_minutes="<= 90 on 2 CPU cores",
        task_options=_TASK_OPTIONS,
    ),
    "330m": Scale(
        "330m",
        shape=dict(d_model=1024, n_heads=6, n_kv_heads=3, head_dim=64, mlp_dim=4096, max_seq_len=2048),
        layers=30,
        pretrain_steps=20_000,
        pretrain_seq_len=512,
        pretrain_batch_size=64,
        finetune_steps=3_000,
        batch_size=64,
        eval_limit=1_000,
        tasks=("addition", "code2doc"),
        teacher_shape=dict(d_model=2048, n_heads=16, n_kv_heads=8, head_dim=128, mlp_dim=8192, max_seq_len=2048),
        teacher_layers=24,
        teacher_steps=10_000,
        kd_labeled=(1_000, 8_000),
        kd_pool=64_000,
        kd_steps=3_000,
        long_lengths=(512, 2048),
        long_batches=32,
        vision_steps=3_000,
        vision_train_size=10_000,
        bench_models=("encdec-330m", "deconly-330m"),
        bench_input_len=512,
        bench_output_len=128,
        bench_repeats=5,
        # 8 pretraining runs of 20k x 64 x 512 = 655M tokens at 330M parameters: ~1.3e18 FLOPs each,
        # ~2.3 h each on one H100 at ~40% MFU in bf16; the fine-tunes, KD and vision add a few hours
        expected_minutes="an estimate: ~20-30 hours on one H100 (pretraining dominates); not run yet",
        task_options=_TASK_OPTIONS,
    ),
}


def split_layers(layers: int, encoder_share: float) -> tuple[int, int]:
    """(encoder, decoder) layers for a split of `layers` (at least one of each)."""
    enc = min(layers - 1, max(1, round(layers * encoder_share)))
    return enc, layers - enc
