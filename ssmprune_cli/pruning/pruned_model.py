"""A dense model plus a pruning spec: a plain nn.Module that prunes on the fly.

At each prune point the hook scores the kept tokens from the block's output-projection input (captured with a
forward pre-hook), keeps the top-k per image in original order, and hands the model a narrower TokenLayout.
Other methods (`spec.method`, pruning/methods.py) merge or fuse tokens there instead: the hook hands them the
tokens and takes back the rows that go on with their new features. The `mtr` score reads the site's scan step
sizes Δ through the mixers' `token_delta_probe` instead of the output projection's input.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ssmprune_cli.models.layers.token_layout import TokenLayout

from .importance import reads_delta, select_tokens, token_scores
from .methods import DEFAULT_METHOD, USES_SCORES, Step, reduce_tokens
from .plan import PruningSpec, validate_method, validate_points


class PrunedModel(nn.Module):
    def __init__(self, model: nn.Module, spec: PruningSpec):
        super().__init__()
        validate_points(model, spec.points)
        validate_method(model, spec.points, spec.method)
        self.model = model
        self.spec = spec
        self._keep: Dict[str, int] = {p.site: p.keep for p in spec.points}
        self._captured: Dict[str, Tensor] = {}
        self._protected_cache: Dict[Any, Tensor] = {}
        self._handles = []
        self._deltas: Dict[Tuple[str, int, int], Tuple[Tensor, Optional[Tensor]]] = {}
        self._delta_mixers: Dict[str, List[nn.Module]] = {}
        self._sizes: Optional[Tuple[TokenLayout, Tensor]] = None  # merging: tokens each kept row stands for
        self._uses_delta = reads_delta(spec.score) and USES_SCORES[spec.method]
        for site in self._keep:
            self._handles.append(model.score_module(site).register_forward_pre_hook(self._capture(site)))
            if self._uses_delta:
                self._delta_mixers[site] = _site_mixers(model, site)
                for i, mixer in enumerate(self._delta_mixers[site]):
                    mixer.token_delta_probe = self._delta_probe(site, i)
        if spec.delta_fill == "calib":
            for mixer in model.mixers():
                if getattr(mixer, "delta_hat", None) is None:
                    # placeholder with the right shape; filled by calibration or by loading a checkpoint
                    mixer.delta_hat = mixer.default_delta_hat().detach().clone()
        self.family = getattr(model, "family", "?")
        self.cfg = getattr(model, "cfg", None)

    # ------------------------------------------------------------------ capture and prune
    def _capture(self, site: str):
        def pre_hook(module, args):
            self._captured[site] = args[0]
        return pre_hook

    def _delta_probe(self, site: str, index: int):
        def probe(direction: int, dt: Tensor, delta_bias: Optional[Tensor]):
            # a reference, kept until the prune point reads it or the forward ends (one per direction: bounded)
            self._deltas[(site, index, direction)] = (dt.detach(), None if delta_bias is None else delta_bias.detach())
        return probe

    def _site_delta(self, site: str, layout: TokenLayout) -> Tensor:
        """Δ (b, K, D, E) of the site's block at the kept tokens, post-softplus, one row per scan direction."""
        rows = []
        for (s, i, d) in sorted(k for k in self._deltas if k[0] == site):
            dt, bias = self._deltas.pop((s, i, d))
            delta = torch.nn.functional.softplus(dt.float() + (0.0 if bias is None else bias.float()))
            if delta.shape[1] != layout.num_kept:  # Δ computed on the whole grid (PlainMamba): the kept tokens'
                delta = layout.gather(delta)
            rows.append(delta)
        if not rows or len({int(r.shape[-1]) for r in rows}) > 1:  # int(): traced sizes are tensors
            raise RuntimeError(f"score 'mtr' needs the scan step sizes of equally wide scans at {site}")
        return torch.stack(rows, dim=2)

    def prune_hook(self, site: str, tensors: Tuple[Tensor, ...], layout: Optional[TokenLayout]):
        keep = self._keep.get(site)
        if keep is None:
            return tensors, layout
        current = tensors[0].shape[1]
        if keep >= current:
            return tensors, layout
        o = self._captured.pop(site)
        L, grid, protected = self.model.site_tokens(site)
        b = o.shape[0]
        kind = dict(grid=grid if grid and grid[0] * grid[1] == L else None, conv_fill=self.spec.conv_fill,
                    delta_fill=self.spec.delta_fill)
        first = layout is None  # every token is there: rows are positions (no layout to build for the look-up)
        if first:
            layout = TokenLayout.full(b, L, device=o.device, **kind)
        prot = None
        if protected:
            pos = self._protected(site, protected, o.device).expand(b, -1)
            prot = pos if first else layout.rank().gather(1, pos)
        gen = None
        if self.spec.score == "random":
            gen = torch.Generator(device=o.device).manual_seed(self.spec.seed + _site_salt(site))
        refill = None
        if getattr(self.model, "hierarchical", False):
            x = tensors[0]
            refill = x if layout.refill is None and x.shape[1] == L else layout.refilled(x)
        if self.spec.method != DEFAULT_METHOD or self._uses_delta:
            return self._reduce(site, tensors, layout, keep, prot, o, gen, refill)
        idx = select_tokens(token_scores(self.spec.score, o, gen), keep, prot)
        new_layout = layout.select(idx, refill=refill)
        return tuple(layout.take(t, idx) for t in tensors), new_layout

    def _reduce(self, site, tensors, layout, keep, prot, o, gen, refill):
        """A method of the table (pruning/methods.py) at one prune point."""
        method = self.spec.method
        scores = None
        if USES_SCORES[method]:
            source = self._site_delta(site, layout) if self._uses_delta else o
            scores = token_scores(self.spec.score, source, gen)
        sizes = None
        if method == "merge":
            held = self._sizes
            sizes = held[1] if held is not None and held[0] is layout else \
                torch.ones(tensors[0].shape[:2], device=tensors[0].device)
        out = reduce_tokens(method, Step(tuple(tensors), keep, prot, scores, sizes), self.spec.options)
        new_layout = layout.select(out.rows, refill=refill)
        if method == "merge":
            self._sizes = (new_layout, out.sizes)
        return out.tensors, new_layout

    @torch.compiler.disable  # traced, the cache would be bypassed: a host-to-device copy inside the graph
    def _protected(self, site: str, protected: List[int], device: torch.device) -> Tensor:
        """Protected positions as a device tensor, made once: a forward makes no host-to-device copies."""
        key = (site, device)
        if key not in self._protected_cache:
            with torch.inference_mode(False):
                self._protected_cache[key] = torch.tensor(protected, device=device)
        return self._protected_cache[key]

    def forward(self, x: Tensor) -> Any:
        try:
            return self.model(x, hook=self.prune_hook)
        finally:
            self._captured.clear()
            self._deltas.clear()
            self._sizes = None

    def detach(self) -> nn.Module:
        """Remove the capture hooks and probes and return the dense model (used when comparing candidates)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for mixers in self._delta_mixers.values():
            for mixer in mixers:
                mixer.token_delta_probe = None
        self._delta_mixers = {}
        return self.model

    # ------------------------------------------------------------------ description
    def mixers(self) -> List[nn.Module]:
        return self.model.mixers()

    def set_delta_hat(self, values: Sequence[Tensor]) -> None:
        for mixer, v in zip(self.model.mixers(), values, strict=True):
            ref = next(mixer.parameters())
            mixer.delta_hat = v.detach().to(device=ref.device, dtype=ref.dtype).clone()

    def input_size(self):
        return self.model.input_size()

    def normalization(self):
        return self.model.normalization()


def _site_mixers(model: nn.Module, site: str) -> List[nn.Module]:
    """The mixers of the block at `site`: those inside the module that holds the site's score module (Vim,
    PlainMamba: the block's mixer; GroupMamba: the layer's four channel-group mixers)."""
    names = {id(m): name for name, m in model.named_modules()}
    parent = names[id(model.score_module(site))].rpartition(".")[0]
    found = [m for m in model.mixers() if names.get(id(m)) == parent or names.get(id(m), "").startswith(parent + ".")]
    if not found:
        raise ValueError(f"no scan mixer found for prune point {site}")
    return found


def _site_salt(site: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(site))


def rebuild(dense_model: nn.Module, spec: Dict[str, Any]) -> PrunedModel:
    """Rebuild a pruned model from the description stored beside its weights (weights loaded afterwards)."""
    return PrunedModel(dense_model, PruningSpec.from_dict(spec))
