"""Built-in baseline strategies: cache ``none`` and the LLaDA / Dream schedulers."""

from dllm_core import hookimpl


@hookimpl
def dllm_register_caches(register):
    register("none", "dllm_plugins.no_cache:NoCache", description="full recomputation every step (exact)")


@hookimpl
def dllm_register_schedulers(register):
    register("low_confidence", "dllm_plugins.linear_schedule:LowConfidence",
             description="LLaDA: fixed count per step, most confident first")
    register("random", "dllm_plugins.linear_schedule:RandomOrder",
             description="LLaDA: fixed count per step, random order")
    register("maskgit_plus", "dllm_plugins.dream_schedule:MaskGitPlus",
             description="Dream: timestep schedule, max-probability ranking")
    register("topk_margin", "dllm_plugins.dream_schedule:TopKMargin",
             description="Dream: timestep schedule, top-1 minus top-2 margin ranking")
    register("entropy", "dllm_plugins.dream_schedule:Entropy",
             description="Dream: timestep schedule, negative-entropy ranking")
