"""Vim on the stock CUDA kernels official Vim runs on, against ssmprune's dense and pruned models, in one process.

    python3 benchmarks/stock_vim.py                                   # Vim-S, bf16, batch 128 and 1, graphs and eager
    python3 benchmarks/stock_vim.py --device cpu --emulate --variant vim_test --check-only   # layout check, no GPU

The stock path is the official bimamba-v2 fast path (hustvl/Vim's `mamba_inner_fn_no_out_proj`, twice per block)
written out on the compiled extensions it calls: causal-conv1d's `causal_conv1d_fn` and mamba-ssm's
`selective_scan_cuda.fwd`, in the official layouts (channel-major `xz` from `in_proj.weight @ hidden^T`, flipped
copies for the backward direction, `x_proj` on the transposed conv output, B and C made contiguous, the gate inside
the scan, `out_proj` of the two directions' mean). Patch embedding is the official strided conv. The residual add +
RMSNorm between blocks, a Triton kernel in both (mamba-ssm's `layer_norm_fn` there), is ssmprune's `add_norm` here,
so the comparison is of the mixers. The same weights run through both paths: their logits are compared first
(float32, no autocast) and the run stops if they differ.

Only the compiled extension modules are imported: importing the `mamba_ssm` package pulls in `transformers`. To
build them on the GPU machine (no network): download the sdists (`MAMBA_SKIP_CUDA_BUILD=TRUE
CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-build-isolation --no-binary :all:
mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0`, and the ninja, packaging and wheel wheels into a `wheels/` folder
beside them), carry that folder and run `bash benchmarks/stock_build.sh FOLDER` there: it builds the forward
kernels for sm_90 under /tmp (einops is needed by neither extension; this script does not import it).

--emulate swaps the two kernels for PyTorch definitions in the same layouts (a CPU check of the layout code above).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssmprune_cli.ops.fused_norm import add_norm  # noqa: E402
from ssmprune_cli.ops.selective_scan import selective_scan_ref  # noqa: E402


# ------------------------------------------------------------------------------------------------- the kernels
def stock_kernels() -> Dict[str, Callable]:
    """conv(x (b, E, L), weight (E, K), bias) -> silu(causal conv); scan(u, delta, A, B, C, D, z, delta_bias) ->
    gated output (b, E, L): the compiled stock kernels."""
    from causal_conv1d import causal_conv1d_fn
    import selective_scan_cuda

    def scan(u, delta, A, B, C, D, z, delta_bias):
        # B and C as (b, 1 group, N, L): the official `rearrange(B, "(b l) dstate -> b 1 dstate l")`
        out, _states, *rest = selective_scan_cuda.fwd(u, delta, A, B[:, None], C[:, None], D, z, delta_bias, True)
        return rest[0]

    return {"conv": lambda x, w, b: causal_conv1d_fn(x, w, b, activation="silu"), "scan": scan}


def emulated_kernels() -> Dict[str, Callable]:
    """The same calls as PyTorch definitions (float64 stays float64): for checking this file's layouts."""
    def conv(x, w, b):
        K = w.shape[-1]
        y = F.conv1d(F.pad(x, (K - 1, 0)), w.to(x.dtype)[:, None], b.to(x.dtype), groups=x.shape[1])
        return F.silu(y)

    def scan(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True)

    return {"conv": conv, "scan": scan}


# ------------------------------------------------------------------------------------------------- the model
class StockVim(nn.Module):
    """A ssmprune VisionMamba's weights run through the official fast path (module docstring)."""

    def __init__(self, model: nn.Module, kernels: Dict[str, Callable]):
        super().__init__()
        self.model = model
        self.k = kernels

    def _direction(self, xz: Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear, A_log: Tensor,
                   D: Tensor, R: int, N: int) -> Tensor:
        b, _, L = xz.shape
        x, z = xz.chunk(2, dim=1)                                           # (b, E, L) each
        E = x.shape[1]
        u = self.k["conv"](x, conv.weight.view(E, -1), conv.bias)
        x_dbl = F.linear(u.transpose(1, 2).reshape(b * L, E), x_proj.weight)      # "b d l -> (b l) d"
        delta = (dt_proj.weight @ x_dbl[:, :R].t()).view(E, b, L).permute(1, 0, 2)  # "d (b l) -> b d l"
        B = x_dbl[:, R:R + N].view(b, L, N).transpose(1, 2).contiguous()          # "(b l) n -> b n l"
        C = x_dbl[:, R + N:].view(b, L, N).transpose(1, 2).contiguous()
        A = -torch.exp(A_log.float())
        return self.k["scan"](u, delta, A, B, C, D.float(), z, dt_proj.bias.float())

    def _mixer(self, mixer: nn.Module, h: Tensor) -> Tensor:
        b, L, Dm = h.shape
        R, N = mixer.dt_rank, mixer.d_state
        # "d (b l) -> b d l", then contiguous as the official inner function makes it
        xz = (mixer.in_proj.weight @ h.reshape(b * L, Dm).t()).view(-1, b, L).permute(1, 0, 2).contiguous()
        out = self._direction(xz, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D, R, N)
        out_b = self._direction(xz.flip([-1]), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log,
                                mixer.D_b, R, N)
        return F.linear((out + out_b.flip([-1])).transpose(1, 2) / 2, mixer.out_proj.weight)

    def forward(self, x: Tensor) -> Tensor:
        m = self.model
        hidden = m.patch_embed.proj(x).flatten(2).transpose(1, 2)         # the official strided conv
        cls = m.cls_token.expand(hidden.shape[0], -1, -1)
        hidden = torch.cat([hidden[:, :m.cls_pos], cls, hidden[:, m.cls_pos:]], dim=1) + m.pos_embed
        residual = None
        for layer in m.layers:
            res_dtype = torch.promote_types(hidden.dtype, torch.float32)
            normed, residual = add_norm(hidden, residual, layer.norm.weight, None, layer.norm.eps, "rms",
                                        out_dtype=hidden.dtype, residual_dtype=res_dtype)
            hidden = self._mixer(layer.mixer, normed)
        out = residual[:, m.cls_pos] + hidden[:, m.cls_pos]
        return m.head(m.norm_f(out).to(hidden.dtype))


# ------------------------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="vim_small")
    p.add_argument("--device", default="cuda")
    p.add_argument("--emulate", action="store_true", help="PyTorch definitions instead of the compiled kernels")
    p.add_argument("--check-only", action="store_true", help="compare logits, time nothing")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()

    from models import CASES, build_pair
    from ssmprune_cli.report.bench import BenchSettings, time_interleaved

    try:
        kernels = emulated_kernels() if a.emulate else stock_kernels()
    except ImportError as exc:
        print(f"stock kernels not installed ({exc}); see this script's docstring, or use --emulate", file=sys.stderr)
        return 2
    variant, ratio = CASES.get(a.variant, (a.variant, 0.3))
    dense, pruned = build_pair(variant, ratio)
    device = torch.device(a.device)
    dense, pruned = dense.to(device), pruned.to(device)
    stock = StockVim(dense, kernels).eval()

    # the same weights through both paths: float64 when emulated on the CPU, else float32
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, *dense.input_size(), generator=gen, dtype=dtype).to(device)
    with torch.no_grad():
        ref_model = dense.to(dtype)
        want, got = ref_model(x), stock(x)
        dense.float()
    rel = float((got - want).norm() / want.norm())
    limit = 1e-10 if dtype == torch.float64 else 1e-4
    print(f"logits, stock path against ssmprune's ({dtype}): relative difference {rel:.2e} (limit {limit:.0e})")
    if not rel <= limit:
        print("the stock path does not reproduce the model: not timing it", file=sys.stderr)
        return 1
    if a.check_only:
        return 0

    rows = []
    for graphs in (True, False):
        for batch in (a.batch, 1):
            settings = BenchSettings(device=a.device, dtype="bf16", batch=batch, repeats=a.repeats, graphs=graphs)
            xb = torch.randn(batch, *dense.input_size(), device=device)
            timings, _peak, modes = time_interleaved({"stock dense": stock, "ssmprune dense": dense,
                                                      "ssmprune pruned": pruned}, xb, settings, device,
                                                     what=f"batch {batch}")
            for name, t in timings.items():
                rows.append((name, batch, graphs, modes[name], t.median))
    print(f"\n{a.variant}, bf16 autocast, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"{'model':16s} {'batch':>5s} {'mode':34s} {'ms':>9s} {'img/s':>9s} {'x stock':>8s}")
    for name, batch, graphs, mode, sec in rows:
        base = next(r[4] for r in rows if r[0] == "stock dense" and r[1] == batch and r[2] == graphs)
        print(f"{name:16s} {batch:5d} {mode[:34]:34s} {sec * 1e3:9.3f} {batch / sec:9.1f} {base / sec:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
