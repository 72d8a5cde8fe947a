"""Do two versions of ssmprune give the same logits for the same pruned model file? Run once per tree, then compare.

    (cd .base && python ../benchmarks/same_logits.py run ../old.pt)   # an older tree (git archive of a commit)
    python benchmarks/same_logits.py run new.pt                       # this tree
    python benchmarks/same_logits.py compare old.pt new.pt

Each tree builds the same pruned models from the same seeds: the families' small test variants, perturbed random
weights, random Δ̂, every conv_fill and delta_fill, on the GPU in float32 and bf16 autocast when there is one, and
on the CPU in float64. The comparison prints the relative difference per model and precision.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

FAMILIES = {"vim": "vim_test", "plainmamba": "plainmamba_test", "groupmamba": "groupmamba_test"}
FILLS = {"vim": ["hold", "zero", "packed"], "plainmamba": ["hold", "zero"], "groupmamba": ["hold", "zero"]}
DELTA = ["calib", "bias", "zero"]


def _points(model):
    from ssmprune_cli.pruning.plan import PrunePoint

    sites = model.prune_sites()
    L = model.site_tokens(sites[0])[0]
    if getattr(model, "hierarchical", False):
        s1 = [s for s in sites if s.startswith("1.")][:1]
        return [PrunePoint(site=s, keep=max(2, int(L * 0.6))) for s in s1]
    return [PrunePoint(site=sites[0], keep=max(2, int(L * 0.7))), PrunePoint(site=sites[-2], keep=max(2, int(L * 0.5)))]


def build(name: str, conv_fill: str, delta_fill: str):
    from ssmprune_cli.models import create_model
    from ssmprune_cli.pruning.plan import PruningSpec
    from ssmprune_cli.pruning.pruned_model import PrunedModel

    torch.manual_seed(0)
    m = create_model(name).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p + 0.05 * torch.randn(p.shape, generator=g))
        for mixer in m.mixers():
            mixer.delta_hat = mixer.default_delta_hat().detach() * (0.5 + torch.rand(mixer.default_delta_hat().shape,
                                                                                    generator=g))
    return PrunedModel(m, PruningSpec(_points(m), conv_fill=conv_fill, delta_fill=delta_fill)).eval()


def run(out: Path) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = {}
    for family, name in FAMILIES.items():
        for cf, df in itertools.product(FILLS[family], DELTA):
            model = build(name, cf, df).to(device)
            c, h, w = model.input_size()
            x = torch.randn(4, c, h, w, generator=torch.Generator().manual_seed(2)).to(device)
            with torch.inference_mode():
                logits[f"{family} {cf}/{df} fp32"] = model(x).float().cpu()
                if device == "cuda":
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        logits[f"{family} {cf}/{df} bf16"] = model(x).float().cpu()
                m64 = build(name, cf, df).double()
                logits[f"{family} {cf}/{df} fp64 cpu"] = m64(x.cpu().double()).cpu()
    torch.save(logits, out)
    print(f"{len(logits)} logits written to {out}")


def compare(a: Path, b: Path) -> None:
    la, lb = torch.load(a), torch.load(b)
    worst = 0.0
    for k in sorted(la):
        if k not in lb:
            print(f"{k:36s} missing in {b}")
            continue
        d = ((la[k].double() - lb[k].double()).norm() / la[k].double().norm()).item()
        worst = max(worst, d if "fp64" in k else 0.0)
        print(f"{k:36s} relative difference {d:.3e}")
    print(f"largest float64 difference: {worst:.3e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, ".")
    if args.cmd == "run":
        run(args.out)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
