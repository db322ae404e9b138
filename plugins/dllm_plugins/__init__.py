"""The built-in plugins of dllm_core.

Each module here is a plugin registered under the ``dllm_core`` entry-point group, exactly as a
third-party package would be, and uses only the public API of :mod:`dllm_core`.
"""
