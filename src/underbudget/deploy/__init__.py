"""Deploy forms of pruned models: sparse kernels where they are faster than dense ones.

    from underbudget import deploy
    fast = deploy.to_sparse(model, masks)            # CSR where the documented rule says it wins
    fast = deploy.to_sparse(model, where="all")      # every Linear / 1x1 conv with zeros
    fast.sparse_choices                              # per layer: form, density, reason
    plain.load_state_dict(fast.state_dict())         # same keys and dense shapes as the model

Linear layers and 1x1 convolutions become CSR layers (2:4 semi-structured on GPUs that have
the kernels, when the weights follow that pattern); with ``kxk=True`` other convolutions
become :class:`SparseConv2d` (computed from their nonzero weights) where the rule says it
wins; every other layer stays dense.
``fast_pooling`` (or ``to_sparse(..., fast_pool=True)``) swaps 2x2 max-pools for an exact,
faster formulation. On a CPU the sparse layers run the compiled kernels of
:mod:`underbudget.deploy.native` (built on first use; ``native.available()`` says whether
they are), and a sparse convolution followed by ReLU and a 2x2 max-pool does both as it
writes its output (:func:`fuse_conv_pool`).
"""

from underbudget.deploy import native
from underbudget.deploy.convert import eligible, fast_pooling, sparse_plan, to_dense, to_sparse
from underbudget.deploy.fuse import PooledAbove, fuse_conv_pool
from underbudget.deploy.layers import (
    MaxPool2x2,
    SemiStructuredLinear,
    SparseConv1x1,
    SparseLinear,
)
from underbudget.deploy.rule import (
    CONV_MIN_REDUCTION,
    CPU_THRESHOLDS,
    LayerChoice,
    conv_threshold,
    csr_threshold,
    is_two_four,
    semi_structured_supported,
    two_four_mask,
)
from underbudget.deploy.sparse_conv import SparseConv2d

__all__ = [
    "CONV_MIN_REDUCTION",
    "CPU_THRESHOLDS",
    "LayerChoice",
    "MaxPool2x2",
    "PooledAbove",
    "SemiStructuredLinear",
    "SparseConv1x1",
    "SparseConv2d",
    "SparseLinear",
    "conv_threshold",
    "csr_threshold",
    "eligible",
    "fast_pooling",
    "fuse_conv_pool",
    "is_two_four",
    "native",
    "semi_structured_supported",
    "sparse_plan",
    "to_dense",
    "to_sparse",
    "two_four_mask",
]
