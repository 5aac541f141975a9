"""The metric plugin contract and a runner that evaluates every applicable metric on a context.

A registered metric (hook ``mtd_register_metrics``, see docs/metrics.md) is any callable ``metric(ctx:
EvalContext) -> Mapping[str, float]``, optionally with ``applies_to(taskset) -> bool`` (default: applies to
every task set) and ``missing(ctx) -> list[str]`` (what the context lacks; default: nothing). The
:class:`Metric` base class provides both and the error raised when called on a context it cannot use.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import ClassVar

import attrs

from mtd_core.metrics.context import EvalContext, TaskSetLike, base_modality
from mtd_core.metrics.errors import MetricError
from mtd_core.metrics.results import MetricReport


class Metric(abc.ABC):
    """Base class of a registered metric. Subclasses set ``description`` and implement :meth:`compute`.

    Args:
        name: the name it is registered under (reports carry it); default: the class attribute ``default_name``.
    """

    default_name: ClassVar[str] = "metric"
    description: ClassVar[str] = ""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.default_name

    def applies_to(self, taskset: TaskSetLike) -> bool:
        """Whether the metric is meaningful for a task set (by the kinds of modality it has); default: always."""
        return True

    def missing(self, ctx: EvalContext) -> list[str]:
        """What ``ctx`` lacks for this metric, one line each; empty when it can run."""
        return []

    @abc.abstractmethod
    def compute(self, ctx: EvalContext) -> MetricReport:
        """Evaluate on a context that :meth:`missing` accepted."""

    def __call__(self, ctx: EvalContext) -> MetricReport:
        """Evaluate on ``ctx``; a MetricError listing what is missing when it cannot."""
        if not isinstance(ctx, EvalContext):
            raise MetricError(f"metric {self.name!r}: expected an EvalContext, got {type(ctx).__name__}")
        lacking = self.missing(ctx)
        if lacking:
            raise MetricError(f"metric {self.name!r} cannot run on this evaluation context:\n  - "
                              + "\n  - ".join(lacking))
        return self.compute(ctx)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def has_base_image(taskset: TaskSetLike) -> bool:
    """Whether the task set's base modality holds images (float (C, H, W) data with 1 or 3 channels, whatever
    its kind): the images FID and the label metrics look at."""
    base = base_modality(taskset)
    if base is None:
        return False
    spec = base.data_spec()
    return len(spec.shape) == 3 and spec.torch_dtype.is_floating_point and spec.shape[0] in (1, 3)


@attrs.frozen
class Evaluation:
    """The outcome of :func:`run_metrics`.

    Attributes:
        reports: metric name -> its report (a mapping of named floats; a MetricReport for built-ins).
        skipped: metric name -> why it did not run (does not apply, or what the context lacks).
    """

    reports: dict[str, Mapping[str, float]]
    skipped: dict[str, str]

    def __str__(self) -> str:
        lines = [str(r) if isinstance(r, MetricReport) else f"{n}: {dict(r)}" for n, r in self.reports.items()]
        lines += [f"{n}: skipped ({why})" for n, why in self.skipped.items()]
        return "\n".join(lines)


def run_metrics(metrics: Mapping[str, Callable[..., Mapping[str, float]]], ctx: EvalContext,
                taskset: TaskSetLike | None = None) -> Evaluation:
    """Run every metric that applies to ``taskset`` (when given) and whose needs ``ctx`` meets.

    Metrics that do not apply, or report something ``missing``, are skipped with the reason; an error raised
    while computing is not caught (a metric bug must not pass silently).
    """
    reports: dict[str, Mapping[str, float]] = {}
    skipped: dict[str, str] = {}
    for name, metric in metrics.items():
        applies = getattr(metric, "applies_to", None)
        if taskset is not None and applies is not None and not applies(taskset):
            skipped[name] = "does not apply to this task set"
            continue
        lacking = metric.missing(ctx) if hasattr(metric, "missing") else []
        if lacking:
            skipped[name] = "; ".join(lacking)
            continue
        reports[name] = metric(ctx)
    return Evaluation(reports=reports, skipped=skipped)
