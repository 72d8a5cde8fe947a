"""The surface every family exposes, so pruning, reports and the CLI never look inside a family file.

Forward with pruning: `model(x, hook=fn)` calls `fn(site, tensors, layout)` after every block, where `site` is
the block's prune-site name, `tensors` a tuple of (b, K, C) token tensors (Vim: (hidden, residual); others:
(x,)) and `layout` the current TokenLayout or None (dense). The hook returns (tensors, layout), possibly
pruned. Hierarchical models refill the grid at the end of each stage and start the next stage dense.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor, nn


class PrunableModel(nn.Module):
    family: str = "?"
    cfg: Any
    hierarchical: bool = False  # True: pruning is per stage and the grid is refilled before downsampling

    # --- description ------------------------------------------------------------------------
    def config_dict(self) -> Dict[str, Any]:
        return asdict(self.cfg)

    def input_size(self) -> Tuple[int, int, int]:
        """(C, H, W) the model expects."""
        raise NotImplementedError

    def normalization(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        """(mean, std) of the input normalisation the weights were trained with."""
        return tuple(self.cfg.mean), tuple(self.cfg.std)

    # --- pruning surface ----------------------------------------------------------------------
    def prune_sites(self) -> List[str]:
        """Names of the points between blocks where tokens may be pruned, in execution order.

        Plain models: "i" = after the i-th block (1-based). Hierarchical: "s.j" = after block j of stage s.
        """
        raise NotImplementedError

    def site_tokens(self, site: str) -> Tuple[int, Tuple[int, int], List[int]]:
        """(tokens L at that site, patch grid (H, W), protected positions never pruned, e.g. the class token)."""
        raise NotImplementedError

    def score_module(self, site: str) -> nn.Module:
        """The module whose *input* is the block's score tensor (the layer's output projection, DESIGN 2.2)."""
        raise NotImplementedError

    def mixers(self) -> List[nn.Module]:
        """Every SSM mixer; each has `n_directions`, a `delta_hat` buffer slot (n_directions, E) or None,
        a `delta_probe` attribute (callable(direction, dt (b, E, l)) or None) and `default_delta_hat()`."""
        raise NotImplementedError

    def block_costs(self) -> List[Dict[str, Any]]:
        """Analytic cost model, one entry per block in execution order:
        {"site": name of the site after this block, "stage": stage id (0 for plain models), "tokens": L,
         "per_token": MACs that scale with kept tokens, "fixed": MACs that do not}.
        Plus fixed_macs() for stem / head. Convention of DESIGN 3 (MACs, scan 9·L·E·N + 2·L·E per direction)."""
        raise NotImplementedError

    def fixed_macs(self) -> int:
        raise NotImplementedError

    def forward(self, x: Tensor, hook: Optional[Any] = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
