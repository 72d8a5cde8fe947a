"""A dense model plus a pruning spec: a plain nn.Module that prunes on the fly.

At each prune point the hook scores the kept tokens from the block's output-projection input (captured with a
forward pre-hook), keeps the top-k per image in original order, and hands the model a narrower TokenLayout.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ssmprune_cli.models.layers.token_layout import TokenLayout

from .importance import select_tokens, token_scores
from .plan import PruningSpec, validate_points


class PrunedModel(nn.Module):
    def __init__(self, model: nn.Module, spec: PruningSpec):
        super().__init__()
        validate_points(model, spec.points)
        self.model = model
        self.spec = spec
        self._keep: Dict[str, int] = {p.site: p.keep for p in spec.points}
        self._captured: Dict[str, Tensor] = {}
        self._protected_cache: Dict[Any, Tensor] = {}
        self._handles = []
        for site in self._keep:
            self._handles.append(model.score_module(site).register_forward_pre_hook(self._capture(site)))
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
        if layout is None:
            layout = TokenLayout.full(b, L, device=o.device,
                                      grid=grid if grid and grid[0] * grid[1] == L else None,
                                      conv_fill=self.spec.conv_fill, delta_fill=self.spec.delta_fill)
        prot = None
        if protected:
            pos = self._protected(site, protected, o.device).expand(b, -1)
            prot = layout.rank().gather(1, pos)
        gen = None
        if self.spec.score == "random":
            gen = torch.Generator(device=o.device).manual_seed(self.spec.seed + _site_salt(site))
        idx = select_tokens(token_scores(self.spec.score, o, gen), keep, prot)
        refill = None
        if getattr(self.model, "hierarchical", False):
            x = tensors[0]
            refill = x if layout.refill is None and x.shape[1] == L else layout.refilled(x)
        new_layout = layout.select(idx, refill=refill)
        return tuple(layout.take(t, idx) for t in tensors), new_layout

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

    def detach(self) -> nn.Module:
        """Remove the capture hooks and return the dense model (used when comparing several candidates)."""
        for h in self._handles:
            h.remove()
        self._handles = []
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


def _site_salt(site: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(site))


def rebuild(dense_model: nn.Module, spec: Dict[str, Any]) -> PrunedModel:
    """Rebuild a pruned model from the description stored beside its weights (weights loaded afterwards)."""
    return PrunedModel(dense_model, PruningSpec.from_dict(spec))
