"""Test kit for dllm_core and its plugin authors: tiny random models, fixtures, conformance suites."""
