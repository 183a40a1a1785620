"""Before fabrication (docs/method.md#stage-1-before-fabrication): how many kernels a metasurface
holds, and what accuracy that optical student's architecture can reach on a dataset.

* :mod:`hil.estimate.layout`: the layout calculator (kernel count, tile grid on the sensor, a plot).
* :mod:`hil.estimate.kernel`: the architecture's neural tangent kernel in its infinite-width limit,
  composed analytically (linear optical convolution, pooling, ReLU fully connected layers), for
  infinitely many kernels or for a random bank of ``M``; and :class:`~hil.estimate.kernel.WideStudent`,
  the finite network it is the limit of.
* :mod:`hil.estimate.regression`: chunked kernel ridge regression, the regulariser chosen on a
  validation split, a bootstrap interval.
* :mod:`hil.estimate.api`: :func:`estimate`, what ``hil estimate CONFIG`` runs (results JSON and plots).
"""

from .api import EstimateConfig, EstimateResult, KernelEstimate, estimate, load_estimate_config, parse_estimate_config
from .kernel import ArchitectureKernel, WideStudent
from .layout import LayoutPlan, LayoutSpec, plan_layout, plot_layout

__all__ = ["ArchitectureKernel", "EstimateConfig", "EstimateResult", "KernelEstimate", "LayoutPlan", "LayoutSpec",
           "WideStudent", "estimate", "load_estimate_config", "parse_estimate_config", "plan_layout", "plot_layout"]
