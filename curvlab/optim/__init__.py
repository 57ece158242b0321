"""curvlab's solvers as ``torch.optim`` optimizers, for your own model, loss and training loop.

::

    opt = curvlab.optim.EACG(model, lr=1.0, loss=my_loss, curvature="pch1", alpha=0.02)
    for x, y in loader:
        loss = opt.step(x=x, y=y)          # the batch-mean loss before the update

:class:`EACG`, :class:`KFI` and :class:`Newton` take a feed-forward ``nn.Sequential``;
:class:`CR` wraps any ``torch.optim`` optimizer on any model. They are the runner's solver
objects (``curvlab train solver=...``) behind torch's optimizer interface.
"""

from curvlab.optim.base import SolverOptimizer
from curvlab.optim.cr import CR
from curvlab.optim.curvature import EACG, KFI, Newton

__all__ = ["EACG", "KFI", "Newton", "CR", "SolverOptimizer"]
