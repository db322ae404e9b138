"""The ``dllm-run`` command line."""
