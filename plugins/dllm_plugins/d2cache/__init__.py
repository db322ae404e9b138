"""Built-in plugin ``d2cache``: the strategies of d2Cache (Jiang et al., arXiv 2509.23094).

* cache policy ``d2cache`` (:mod:`.cache`): dual adaptive row selection with attention rollout;
* scheduler ``certainty_prior`` (:mod:`dllm_plugins.certainty_prior`): quasi left-to-right
  decoding by confidence x certainty density.

The paper's configuration is both together, no blocks, one token per step::

    Engine(model, cache="d2cache", scheduler="certainty_prior").generate_ids(ids, gen_length=256)
"""

from dllm_core import hookimpl


@hookimpl
def dllm_register_caches(register):
    register("d2cache", "dllm_plugins.d2cache.cache:D2Cache",
             description="d2Cache: certainty-prior top-k + last commits + attention-rollout nucleus rows")


@hookimpl
def dllm_register_schedulers(register):
    register("certainty_prior", "dllm_plugins.certainty_prior:CertaintyPrior",
             description="d2Cache: commit by confidence x certainty density (quasi left-to-right)")
