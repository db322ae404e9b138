"""Built-in plugin ``fast_dllm``: the strategies of Fast-dLLM (Wu et al., arXiv 2505.22618).

* cache policies ``prefix`` and ``dual`` (:mod:`.cache`): a full refresh at the first step of each
  block, then only the block (``dual``) or the block and everything after it (``prefix``) is
  recomputed against the cached K/V;
* schedulers ``threshold`` (:mod:`.threshold`) and ``factor`` (:mod:`.factor`): confidence-aware
  parallel decoding.

The paper's configuration (blocks of 32, tau = 0.9)::

    Engine(model, cache="dual", scheduler="threshold").generate_ids(ids, gen_length=256, block_length=32)
"""

from dllm_core import hookimpl


@hookimpl
def dllm_register_caches(register):
    register("prefix", "dllm_plugins.fast_dllm.cache:PrefixCache",
             description="Fast-dLLM PrefixCache: refresh at block start, then recompute the block and its suffix")
    register("dual", "dllm_plugins.fast_dllm.cache:DualCache",
             description="Fast-dLLM DualCache: refresh at block start, then recompute only the block")


@hookimpl
def dllm_register_schedulers(register):
    register("threshold", "dllm_plugins.fast_dllm.threshold:Threshold",
             description="Fast-dLLM: commit every candidate with confidence >= threshold (at least the top one)")
    register("factor", "dllm_plugins.fast_dllm.factor:Factor",
             description="Fast-dLLM: commit the largest n with (n + 1)(1 - c_(n)) <= factor")
