"""Every dataset of a config, read and checked: the one loop `check`, `run` and `eval` share.

Each dataset is prepared by :func:`~matryoshka_train.data.sources.prepare_dataset`; every dataset is
read even when an earlier one has problems, so all of them are reported at once. A hub source that
cannot be reached is a problem for `run` and `eval` and "not verified offline" for `check`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.schema import RunConfig
from ..errors import Problem, UserError
from .distill_labels import takes_teacher_labels
from .sources import HubUnavailable, PreparedDataset, prepare_dataset


@dataclass
class DatasetsRead:
    """The prepared datasets by index (those that could be read), what was not verified, and the problems."""

    prepared: dict[int, PreparedDataset] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def prepare_datasets(config: RunConfig, hub_ok: bool = True, only: set[str] | None = None,
                     offline_is_problem: bool = True) -> DatasetsRead:
    """Prepare every dataset of ``config`` (those named in ``only``, when given).

    ``hub_ok`` false: hub sources are not tried. A hub source that is not tried or cannot be reached
    is a problem when ``offline_is_problem`` (run, eval), else listed as unverified (check).
    """
    out = DatasetsRead()
    for i, dcfg in enumerate(config.datasets):
        if only is not None and dcfg.name not in only:
            continue
        try:
            if dcfg.source.hub and not hub_ok:
                raise HubUnavailable("the hub is unreachable")
            out.prepared[i] = prepare_dataset(dcfg, i, config.training.seed, config.loss_for(dcfg).name,
                                              labels_from_teacher=takes_teacher_labels(config, dcfg))
        except HubUnavailable as exc:
            if offline_is_problem:
                out.problems.append(exc.problem(f"datasets.{i}.source", dcfg.source.describe()))
            else:
                out.unverified.append(f"datasets.{i} ({dcfg.name}): {dcfg.source.describe()} not verified offline")
        except UserError as exc:
            out.problems += exc.problems
    return out
