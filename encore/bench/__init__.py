"""`encore bench`: the encoder-decoder against a decoder-only model of the same size, measured and
explained by an analytic cost model.

The rooms: `config` (what to measure), `backends` (how each kind of model is built and timed:
encore's own through the Engine; `anchors`: Hugging Face, CTranslate2; `registry`: them by name),
`workers` (where it runs: this process or its own), `runner` (the run and its JSON), `report`
(schema, tables, plot), `costmodel` (FLOPs, bytes, roofline), `machine` (roofline probes).
"""

from encore.bench.anchors import CT2Backend, HFBackend, hf_llama_config, hf_t5_config
from encore.bench.backends import Backend, BackendSpec, EncoreBackend
from encore.bench.config import PAPER, BenchConfig, Point, plan_points
from encore.bench.registry import BACKENDS, make_backend
from encore.bench.report import RESULT_FIELDS, format_report, plot, validate_bench_json
from encore.bench.runner import compare, run_bench

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendSpec",
    "CT2Backend",
    "EncoreBackend",
    "HFBackend",
    "BenchConfig",
    "PAPER",
    "Point",
    "RESULT_FIELDS",
    "compare",
    "format_report",
    "hf_llama_config",
    "hf_t5_config",
    "make_backend",
    "plan_points",
    "plot",
    "run_bench",
    "validate_bench_json",
]
