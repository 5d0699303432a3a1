"""`encore reproduce`: every claim of the paper re-measured on this machine by one command.

    reproduce("tiny", "docs/reproduce")                    # all claims; results.json + REPORT.md
    reproduce("smoke", "/tmp/r", only=["efficiency"])      # one claim, in minutes

Claims (`CLAIMS`): efficiency, architecture, split, kd, long_context, vision, scale (the paper's open
check 1: 330M to 10B). Each runs experiments
through the same commands users run (`encore pretrain | finetune | distill | eval | bench`),
remembered in DIR/runs (a finished experiment is never run again, a killed one continues), judges
them and writes its entry of DIR/results.json and DIR/REPORT.md as soon as it is done.
"""

from encore.reproduce.main import CLAIMS, reproduce

__all__ = ["CLAIMS", "reproduce"]
