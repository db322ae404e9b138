"""Built-in model families: LLaDA and Dream."""

from dllm_core import hookimpl


@hookimpl
def dllm_register_models(register):
    register("llada", "dllm_core.models.llada:LLaDAModel",
             description="LLaDA (GSAI-ML/LLaDA-8B-*): bidirectional Llama-style masked diffusion LM")
    register("dream", "dllm_core.models.dream:DreamModel",
             description="Dream (Dream-org/Dream-v0-*-7B): Qwen2.5-based diffusion LM with shifted logits")
