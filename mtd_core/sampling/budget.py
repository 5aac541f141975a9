"""The sampler of a generate() run and its budget of network evaluations (NFE).

Every evaluation of the network counts:

    NFE = draws + passes * spec.nfe(K),    spec.nfe(K) = evals_per_step * K - (evals_per_step - 1),

with ``draws`` = 1 where joint = "commit" draws modalities from their heads at z_K (one evaluation for all of
them), ``passes`` = 2 under classifier-free guidance (told and untold, cfg.py) else 1, and K the reverse steps. A
budget (``nfe``, else DEFAULT_STEPS) gives the sampler K = spec.steps_for((budget - draws) // passes), the most
steps whose NFE fits, so a run never spends more than its budget and spends exactly it where the sampler's step
count allows. Given ``steps``, K is that and the NFE follows from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from mtd_core.errors import ConfigError, closest
from mtd_core.sampling.base import Sampler
from mtd_core.sampling.cfg import passes as cfg_passes
from mtd_core.sampling.options import DEFAULT_STEPS, SamplingOptions
from mtd_core.types import ConfigDict

if TYPE_CHECKING:
    from mtd_core.plugins.registry import Registry


@attrs.frozen
class Budget:
    """A checked sampler, its steps and options, and the network evaluations they spend.

    Attributes:
        spec: the registered sampler.
        steps: its reverse steps K.
        options: its keyword options (eta, variance and ``sampler_options``).
        passes: network evaluations behind each of the sampler's (2 under classifier-free guidance).
        draws: evaluations before the sampler (1 where joint = "commit" draws at z_K, else 0).
    """

    spec: Sampler
    steps: int
    options: ConfigDict
    passes: int = 1
    draws: int = 0

    @property
    def nfe(self) -> int:
        """Every network evaluation of the run: draws + passes * spec.nfe(steps)."""
        return self.draws + self.passes * self.spec.nfe(self.steps)


def check_sampler(o: SamplingOptions, registry: Registry | None, cfg_scale: float, draws: int = 0) -> Budget:
    """The sampler spec, its number of steps and its options, after checking every one of them. ``nfe`` and the
    default budget (DEFAULT_STEPS) count every network evaluation: the ``draws`` before the sampler (joint =
    "commit") and both passes of classifier-free guidance (``cfg_scale``, resolved)."""
    spec = _find(o.sampler, registry)
    passes = cfg_passes(cfg_scale)
    steps = _steps(spec, o.steps, o.nfe, passes, draws)
    if steps < spec.min_steps:
        raise ConfigError(_too_few(o.sampler, spec, steps, o, passes, cfg_scale, draws))
    return Budget(spec, steps, _options(o, spec), passes, draws)


def _find(name: str, registry: Registry | None) -> Sampler:
    """The registered sampler ``name`` (``get_registry()`` when no registry is given)."""
    if registry is None:
        from mtd_core.plugins.registry import get_registry

        registry = get_registry()
    try:
        return registry.sampler(name)
    except ConfigError as e:
        raise ConfigError(f"generate: {e}") from None


def _steps(spec: Sampler, steps: int | None, nfe: int | None, passes: int, draws: int) -> int:
    """K: ``steps`` as given, else the most steps whose NFE fits the budget (``nfe``, else DEFAULT_STEPS) less the
    ``draws``, ``passes`` evaluations a sampler's one."""
    if steps is not None and nfe is not None:
        raise ConfigError(f"generate: give steps or nfe, not both (got steps = {steps}, nfe = {nfe})")
    for key, value in (("steps", steps), ("nfe", nfe)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"generate: {key} must be a positive integer, got {value!r}")
    if steps is not None:
        return steps
    budget = DEFAULT_STEPS if nfe is None else nfe
    return spec.steps_for(max(0, budget - draws) // passes)


def _too_few(name: str, spec: Sampler, steps: int, o: SamplingOptions, passes: int, cfg_scale: float,
             draws: int) -> str:
    """The error of a run with fewer steps than the sampler's minimum, naming the NFE that minimum needs."""
    if o.nfe is not None:
        got = f"nfe = {o.nfe} gives {steps} step(s)"
    else:
        got = f"steps = {steps}" if o.steps is not None else f"the default {DEFAULT_STEPS} NFE give {steps} step(s)"
    twice = (f" with classifier-free guidance's two passes a step: cfg_scale = {cfg_scale:g}, 1 turns it off"
             if passes > 1 else "")
    drawn = "; the committed draw at z_K included: joint='flow' draws none" if draws else ""
    return (f"generate: sampler {name!r} needs at least {spec.min_steps} steps "
            f"(NFE >= {draws + spec.nfe(spec.min_steps) * passes}{twice}{drawn}); {got}")


def _options(o: SamplingOptions, spec: Sampler) -> ConfigDict:
    """The sampler's keyword options (``sampler_options``, then eta and variance where set), each checked against
    the ones ``spec`` accepts."""
    options = dict(o.sampler_options or {})
    if o.eta != 0.0:
        options["eta"] = o.eta
    if o.variance is not None:
        options["variance"] = o.variance
    accepted = spec.option_names()
    for key in options:
        if key not in accepted:
            raise ConfigError(f"generate: sampler {o.sampler!r} has no option {key!r}{closest(key, accepted)}; "
                              f"its options: {accepted}")
    return options


__all__ = ["Budget", "check_sampler"]
