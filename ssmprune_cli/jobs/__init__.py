"""The jobs behind the commands, in the data's direction: checkpoint → model → scores → plan → pruned model →
fine-tune → files and report. The CLI parses options into these requests and renders what comes back."""

from .evaluate import EvalRequest, run_eval
from .finetune import FinetuneRequest, run_finetune
from .prune import PruneRequest, run_prune

__all__ = ["EvalRequest", "FinetuneRequest", "PruneRequest", "run_eval", "run_finetune", "run_prune"]
