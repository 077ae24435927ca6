"""Tensor shape annotations: jaxtyping aliases and the axis glossary (STYLE §5).

Axis names used in annotations across `model/`, `fit/`, `geometry.py` and `track.py`:

| axis | meaning |
|------|---------|
| `T`  | frames of a sequence |
| `N`  | query points |
| `R`  | rays |
| `S`  | samples per ray |
| `P`  | pixels (or points, when flattened) |
| `Q`  | correspondence pairs (frame i, frame j) |
| `F`  | feature channels |
| `L`  | scales |
| `H W`| an image (rows, columns) |
| `*B` | any leading batch |
| `*#batch` | a leading batch that broadcasts against the other `*#batch` arguments; `*batch` (result) is the broadcast shape |

An axis name is reused only where the axes must be equal, because the checker binds them.
"""

from jaxtyping import Bool, Float, Int, Shaped  # noqa: F401  (re-exported for annotations)
from torch import Tensor  # noqa: F401

__all__ = ["Bool", "Float", "Int", "Shaped", "Tensor", "AXES"]

AXES = {
    "T": "frames",
    "N": "query points",
    "R": "rays",
    "S": "samples per ray",
    "P": "pixels or flattened points",
    "Q": "correspondence pairs",
    "F": "feature channels",
    "L": "scales",
    "H": "image rows",
    "W": "image columns",
}
