"""FLOPs as fvcore counts them, with a handle for the selective scan and an explicit decision for every other op.

Convention (DESIGN 3): fvcore counts one multiply-add as one, so numbers are labelled "GMACs (fvcore)".
Counted: linear / matmul / conv layers (fvcore's own handles), the gather conv (the depthwise convs of pruned and
dense mixers: one multiply-add per output and tap) and the scan, 9·B·L·E·N + B·L·E for D + B·L·E for
the z gate when the scan applies it, per call (one call per direction). Not counted, by the same convention as
the published numbers and the analytic cost model: normalisation, activations, elementwise arithmetic,
reductions and the pruning bookkeeping (scores, top-k, index maps, gathers, and the merging and fusing methods'
matching and weighted averages: every method costs the same at the same schedule). Those ops are listed in the
result (`not_counted`), and any op with no decision at all ends up in `unsupported`, never silently at zero.

While torch.jit traces, `ops.selective_scan` runs as one autograd Function (`TracedScan`), whatever the
backend, so fvcore sees the scan once per call instead of the chunked reference's einsums.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ssmprune_cli.ops.gather_conv import GATHER_CONV_OP, gather_conv_flop_jit

CONVENTION = "GMACs (fvcore)"
CONVENTION_NOTE = ("fvcore counts 1 multiply-add as 1; the selective scan counts 9·B·L·E·N + 2·B·L·E per direction "
                   "(the Mamba authors' convention); norms, activations, elementwise ops and pruning bookkeeping "
                   "are not counted")
SCAN_OP = "prim::PythonOp.TracedScan"

# Ops the models run that carry no multiply-adds under this convention: recorded when seen, counted as zero.
NOT_COUNTED: Dict[str, str] = {
    **{f"aten::{op}": "normalisation" for op in ("layer_norm", "batch_norm", "group_norm", "rsqrt")},
    **{f"aten::{op}": "activation" for op in ("silu", "gelu", "sigmoid", "softplus", "relu", "exp", "tanh")},
    **{f"aten::{op}": "elementwise" for op in (
        "add", "add_", "sub", "rsub", "mul", "mul_", "div", "div_", "neg", "pow", "sqrt", "abs", "where",
        "masked_fill", "clamp", "clamp_min", "fill_", "lt", "le", "ge", "gt", "eq", "ne", "any", "__and__")},
    **{f"aten::{op}": "reduction" for op in ("mean", "sum", "cumsum", "cummax", "cummin", "max", "argmin", "min")},
    **{f"aten::{op}": "pruning bookkeeping (scores, top-k, index maps, gathers)" for op in (
        "topk", "sort", "argsort", "scatter", "scatter_", "gather", "index", "cdist", "meshgrid", "flip",
        "ones_like", "full", "full_like", "expand_as", "clone", "index_select", "new_empty", "pad",
        "constant_pad_nd", "upsample_bicubic2d", "argmax", "nan_to_num", "zeros_like")},
    # token merging / fusing (pruning/methods.py): matching by cosine and size- or score-weighted averages
    **{f"aten::{op}": "pruning bookkeeping (merging and fusing)" for op in ("scatter_add", "linalg_vector_norm")},
}


def scan_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Handle for `TracedScan`: inputs (u, delta, A, B, C, D, z, delta_bias, B_bias, gap, delta_fill), an
    absent tensor being empty. u: (b, E, L), A: (E, N)."""
    b, e, l = _shape(inputs[0])
    n = _shape(inputs[2])[1]
    # DESIGN 3, the Mamba authors' convention: 9·B·L·E·N + 2·B·L·E per scan call (direction), whether the
    # D skip and the z gate happen inside the scan or next to it, so every family is counted alike.
    return Counter({"selective_scan": b * l * e * (9 * n + 2)})


def _shape(value: Any) -> Optional[Tuple[int, ...]]:
    return tuple(value.type().sizes()) if value.isCompleteTensor() else None


# --------------------------------------------------------------------------------------------------- result
@dataclass
class FlopCount:
    """Per image (the traced batch divided out). `blocks` pairs each block's fvcore count with the analytic
    cost model's (`block_costs()` at the tokens the block sees)."""

    macs: int
    analytic_macs: int
    by_operator: Dict[str, int]
    by_module: Dict[str, int]
    blocks: List[Dict[str, Any]]
    unsupported: Dict[str, int]
    not_counted: Dict[str, int]
    batch: int = 1
    convention: str = CONVENTION
    note: str = CONVENTION_NOTE
    dropped: Dict[str, str] = field(default_factory=dict)  # why each not-counted op is not counted

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def agreement(self) -> float:
        """fvcore / analytic - 1."""
        return self.macs / self.analytic_macs - 1.0 if self.analytic_macs else float("nan")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["gmacs"] = self.gmacs
        d["analytic_gmacs"] = self.analytic_macs / 1e9
        d["agreement"] = self.agreement
        return d


# --------------------------------------------------------------------------------------------------- counting
def core_and_points(model: nn.Module) -> Tuple[nn.Module, list, str]:
    """(family model, prune points, module-name prefix of the family model inside `model`)."""
    spec = getattr(model, "spec", None)
    inner = getattr(model, "model", None)
    if spec is not None and inner is not None:
        return inner, list(spec.points), "model."
    return model, [], ""


def analytic_macs(model: nn.Module) -> int:
    """The analytic cost model (pruning/plan.py) of a dense or pruned model, per image."""
    from ssmprune_cli.pruning.plan import schedule_macs

    core, points, _ = core_and_points(model)
    return schedule_macs(core, points)


def example_input(model: nn.Module, batch: int = 1, seed: int = 0) -> Tensor:
    """A seeded standard-normal batch of the model's input size, on the model's device and dtype."""
    ref = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *model.input_size()), generator=g)
    return x.to(device=ref.device, dtype=ref.dtype)


@torch.no_grad()
def count_flops(model: nn.Module, batch: int = 1, inputs: Optional[Tensor] = None, seed: int = 0,
                compute_scan: bool = False) -> FlopCount:
    """Trace one forward pass with fvcore and return per-image counts, per operator, module and block.

    The scan's values do not change any count (token counts are fixed by the schedule), so by default the traced
    scan only produces a tensor of the right shape; `compute_scan=True` runs it for real."""
    from ssmprune_cli.ops.selective_scan import traced_scan_shapes_only

    FlopCountAnalysis = _fvcore_analysis()

    x = example_input(model, batch, seed) if inputs is None else inputs
    batch = x.shape[0]
    seen: Counter = Counter()
    analysis = FlopCountAnalysis(model, (x,))
    analysis.set_op_handle(SCAN_OP, scan_flop_jit)
    analysis.set_op_handle(GATHER_CONV_OP, gather_conv_flop_jit)
    for name in NOT_COUNTED:
        analysis.set_op_handle(name, _recorder(name, seen))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with _quiet("fvcore"), (contextlib.nullcontext() if compute_scan else traced_scan_shapes_only()):
            total = analysis.total()
    finally:
        for m, training in modes:  # each module as it was: model.train(flag) would set the flag everywhere
            m.training = training
    core, points, prefix = core_and_points(model)
    by_module = analysis.by_module()
    per = lambda v: int(round(v / batch))  # noqa: E731
    return FlopCount(
        macs=per(total),
        analytic_macs=analytic_macs(model),
        by_operator=_by_operator(analysis.by_operator(), per),
        by_module={name: per(by_module.get(prefix + name, 0)) for name, _ in core.named_children()},
        blocks=_blocks(core, points, prefix, by_module, per),
        unsupported=dict(sorted(analysis.unsupported_ops().items())),
        not_counted={k: v // 1 for k, v in sorted(seen.items())},
        batch=batch,
        dropped={k: NOT_COUNTED[k] for k in sorted(seen)},
    )


def _by_operator(counts: Dict[str, float], per: Callable[[float], int]) -> Dict[str, int]:
    """Per operator; a batched matmul is a set of linear layers run as one (GroupMamba's four groups' projections,
    ops/grouped_linear.py), so it is reported as "linear"."""
    merged: Counter = Counter()
    for k, v in counts.items():
        merged["linear" if k == "bmm" else k] += v
    return {k: per(v) for k, v in sorted(merged.items())}


def _fvcore_analysis():
    """fvcore's FlopCountAnalysis, imported here so `import ssmprune_cli` stays light; fvcore.nn scripts a few
    losses at import, which newer torch reports as deprecated: not our users' concern."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


def _recorder(name: str, seen: Counter) -> Callable[[List[Any], List[Any]], Counter]:
    def handle(inputs: List[Any], outputs: List[Any]) -> Counter:
        seen[name] += 1
        return Counter()
    return handle


class _quiet:
    """Raise a logger's level for the duration (fvcore warns through `logging`)."""

    def __init__(self, name: str):
        self.logger = logging.getLogger(name)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def block_module_names(core: nn.Module, prefix: str = "") -> List[str]:
    """Module name of every block in `block_costs()` order: the score module's path cut after its last index
    (layers.3.mixer.out_proj → layers.3; block2.0.attn.proj → block2.0; layers.2.blocks.5.op.out_proj →
    layers.2.blocks.5)."""
    names = {id(m): n for n, m in core.named_modules()}
    out = []
    for blk in core.block_costs():
        path = names[id(core.score_module(blk["site"]))].split(".")
        cut = max(i for i, part in enumerate(path) if part.isdigit())
        out.append(prefix + ".".join(path[:cut + 1]))
    return out


def _blocks(core, points, prefix, by_module, per) -> List[Dict[str, Any]]:
    from ssmprune_cli.pruning.plan import tokens_per_block

    rows = []
    counts = tokens_per_block(core, points)
    for i, (blk, name, k) in enumerate(zip(core.block_costs(), block_module_names(core, prefix), counts)):
        rows.append({"block": i + 1, "site": blk["site"], "stage": blk["stage"], "module": name[len(prefix):],
                     "tokens": k, "macs": per(by_module.get(name, 0)),
                     "analytic_macs": int(blk["fixed"] + blk["per_token"] * k)})
    return rows


def flops_table_rows(fc: FlopCount) -> List[Tuple[str, str, str, str]]:
    """(block, tokens, fvcore GMACs, analytic GMACs) rows, consecutive equal rows merged (for people)."""
    rows: List[Tuple[str, str, str, str]] = []
    for b in fc.blocks:
        row = (str(b["tokens"]), f"{b['macs'] / 1e9:.5g}", f"{b['analytic_macs'] / 1e9:.5g}")
        if rows and rows[-1][1:] == row and re.fullmatch(r"\d+(–\d+)?", rows[-1][0]):
            first = rows[-1][0].split("–")[0]
            rows[-1] = (f"{first}–{b['block']}",) + row
        else:
            rows.append((str(b["block"]),) + row)
    return rows


# --------------------------------------------------------------------------------------------------- analyze
def analyze_flops(loaded) -> Dict[str, Any]:
    """`analyze`'s FLOPs: the file's model and, for a pruned file, its dense model too."""
    model = loaded.model
    fc = count_flops(model)
    doc: Dict[str, Any] = {"model": fc.to_dict()}
    core, points, _ = core_and_points(model)
    if points:
        dense = count_flops(core)
        doc["dense"] = dense.to_dict()
        doc["reduction"] = 1.0 - fc.macs / dense.macs
    return doc


def render_flops(doc: Dict[str, Any]) -> None:
    """`analyze`'s FLOPs for people, on stdout: totals, the ops not counted, per-block counts beside the analytic
    model, and the convention as the table's caption."""
    from rich.table import Table

    from .console import results

    fc = doc["model"]
    head = Table(show_header=False, title=f"FLOPs, {fc['convention']}", caption=fc["note"])
    head.add_column(style="bold")
    head.add_column()
    head.add_row("model", f"{fc['gmacs']:.5g}")
    if "dense" in doc:
        head.add_row("dense", f"{doc['dense']['gmacs']:.5g}")
        head.add_row("reduction", f"{doc['reduction']:.2%}")
    head.add_row("analytic cost model", f"{fc['analytic_gmacs']:.5g} (fvcore {fc['agreement']:+.3%})")
    for op, v in fc["by_operator"].items():
        head.add_row(f"  {op}", f"{v / 1e9:.5g}")
    head.add_row("not counted", ", ".join(k.split("::")[-1] for k in fc["not_counted"]) or "-")
    head.add_row("could not count", ", ".join(fc["unsupported"]) or "none")
    results.print(head)
    table = Table(title="GMACs per block")
    for col in ("block", "tokens", "fvcore", "analytic"):
        table.add_column(col, justify="right")
    for row in flops_table_rows(FlopCount(**{k: fc[k] for k in (
            "macs", "analytic_macs", "by_operator", "by_module", "blocks", "unsupported", "not_counted")})):
        table.add_row(*row)
    results.print(table)
