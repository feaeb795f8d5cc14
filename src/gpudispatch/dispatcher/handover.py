"""Which queued job follows which running one (pure).

For each running job R, the job that would start if R ended now is the first start of
``plan`` with R's slots freed that fits in them. A queued job may be the pick of several
running jobs: it becomes one hand-over with a variant per job it may follow, and the
keeper starts it after whichever ends first. Later jobs are handed over only once it has
started, so a hand-over never lets a later job overtake an earlier one that fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gpudispatch.scheduler import Plan


def choose_followers(
    running: Sequence[tuple[str, list[int]]],
    plan_without: Callable[[str], Plan],
    taken: set[str],
) -> dict[str, dict[str, list[int]]]:
    """``{queued job: {running job it may follow: slot indices}}``.

    ``running``: the jobs that may be followed, with their slots; ``plan_without(R)``:
    the plan with R's slots free; ``taken``: jobs already handed over.
    """
    followers: dict[str, dict[str, list[int]]] = {}
    for name, slot_ids in running:
        mine = set(slot_ids)
        pick = next((start for start in plan_without(name).starts if set(start[1]) <= mine),
                    None)
        if pick is not None and pick[0] not in taken:
            followers.setdefault(pick[0], {})[name] = pick[1]
    return followers
