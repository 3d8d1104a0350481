"""Many stacks segmented and tracked: planned and checked before any work, then run here or on a
Dask cluster. The modules import one way (``lint-imports`` checks it):

    many         segment_many, BatchReport: the front door (here, or on a cluster)
    dask_tasks   the Dask tasks (model kept per worker), their submission and progress
    object_tasks one stack's objects tracked by several tasks, merged as one tracker writes them
    run          running here: one checked job tracked into its label file; a batch in turn
    plan         planning and checks: jobs, options, results; prepare, resume, the checkpoint
"""

from .many import BatchReport, segment_many
from .plan import prepare, resolve_checkpoint, resume_state
from .run import describe, discard_partials, run_here

__all__ = [
    "BatchReport",
    "describe",
    "discard_partials",
    "prepare",
    "resolve_checkpoint",
    "resume_state",
    "run_here",
    "segment_many",
]
