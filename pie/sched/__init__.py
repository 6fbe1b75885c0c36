"""KV pages, contexts, admission and batching for one model (the controller side of a worker).

`Scheduler` implements `pie.sched.api.EngineService`; build one per [[model]] with the model's
info, tokenizer, worker client and `[model.scheduler]` settings. Pure Python: no torch.
"""

from pie.sched.api import ContextInfo, EngineError, EngineService, ForwardRequest, ModelInfo
from pie.sched.policy import AdaptivePolicy, EagerPolicy, GreedyPolicy, make_policy
from pie.sched.scheduler import Scheduler, SchedulerSettings

__all__ = [
    "AdaptivePolicy",
    "ContextInfo",
    "EagerPolicy",
    "EngineError",
    "EngineService",
    "ForwardRequest",
    "GreedyPolicy",
    "ModelInfo",
    "Scheduler",
    "SchedulerSettings",
    "make_policy",
]
