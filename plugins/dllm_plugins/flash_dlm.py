"""Built-in plugin ``flash_dlm``: FreeCache and Guided Diffusion (FlashDLM, arXiv 2505.21467).

* cache policy ``freecache`` (:mod:`dllm_plugins.freecache`): recompute a window around the
  decoding frontier, freeze everything left of it;
* guide ``ar`` (:mod:`dllm_plugins.ar_guide`): a small autoregressive model sharing the
  diffusion model's vocabulary verifies the drafts left to right.

The paper's configuration (Dream with a Qwen2.5 guide)::

    Engine("Dream-org/Dream-v0-Instruct-7B", cache="freecache", scheduler="maskgit_plus", guide="ar",
           guide_options={"model": "Qwen/Qwen2.5-1.5B-Instruct"})
"""

from dllm_core import hookimpl


@hookimpl
def dllm_register_caches(register):
    register("freecache", "dllm_plugins.freecache:FreeCache",
             description="FreeCache (FlashDLM): recompute a window around the frontier, freeze the prefix")


@hookimpl
def dllm_register_guides(register):
    register("ar", "dllm_plugins.ar_guide:ARGuide",
             description="Guided Diffusion (FlashDLM): an autoregressive model verifies drafts left to right")
