"""Which failures of a run are the cluster's (a node, an actor or an object lost), not the data's
or the code's: the job runs the parts in flight again for those, and only for those.

On Ray 2.60 a worker node lost mid-run fails the whole Dataset (``ActorUnavailableError`` once
the batch's task retries meet the restarting actor; ray-project/ray#41258, #62746): every
finished part is on storage, so running the open parts again loses nothing and doubles nothing.
"""

from __future__ import annotations

CLUSTER_FAULTS = (
    "ActorDiedError",
    "ActorUnavailableError",
    "NodeDiedError",
    "ObjectLostError",
    "ObjectFetchTimedOutError",
    "OwnerDiedError",
    "ReferenceCountingAssertionError",
    "WorkerCrashedError",
    "RaySystemError",
)


class ClusterFault(RuntimeError):
    """The cluster kept losing parts of itself past ``pipeline.max_attempts``."""


class StoreFailed(RuntimeError):
    """The output's store kept failing a write after its client's own retries (s3fs, botocore)."""


def _chain(error: BaseException):
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _first_fault(error: BaseException) -> BaseException | None:
    """The first of Ray's own cluster-fault exceptions in ``error``'s cause chain."""
    return next((e for e in _chain(error) if type(e).__name__ in CLUSTER_FAULTS and type(e).__module__.startswith("ray")), None)


def fault_name(error: BaseException) -> str:
    """What the cluster lost, in words, from the first cluster fault in the exception's chain."""
    fault = _first_fault(error)
    if fault is None:
        return type(error).__name__
    name = type(fault).__name__
    return {"ActorUnavailableError": "a replica's node was lost (ActorUnavailableError)",
            "ActorDiedError": "a replica died and could not be restarted (ActorDiedError)",
            "NodeDiedError": "a node was lost (NodeDiedError)"}.get(name, f"the cluster lost a part of itself ({name})")  # fmt: skip


def is_cluster_fault(error: BaseException) -> bool:
    """A Ray error of a lost node, actor, worker or object anywhere in ``error``'s cause chain."""
    return _first_fault(error) is not None
