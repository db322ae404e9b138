"""Builds the compiled ops extension ``dllm_core._C`` and nothing else (metadata: pyproject.toml).

Switches (environment variables):
  DLLM_CORE_SKIP_EXTENSION=1   build no extension (pure-Python install; the references serve).
  DLLM_CORE_USE_CUDA=0         build the CPU kernels only, even where CUDA could be built.
  TORCH_CUDA_ARCH_LIST         the CUDA targets, torch's syntax ("9.0a;9.0"); default sm_90a + compute_90 PTX.
  DEBUG=1                      -O0 -g instead of -O3.
  MAX_JOBS                     parallel compile jobs (torch's ninja builder reads it).

The CUDA kernels are built when torch was built with CUDA and a CUDA toolkit is found (CUDA_HOME).
torch is not a build requirement (see pyproject.toml): when it cannot be imported, as in an
isolated build, the extension is skipped with a warning, so installing never fails for want of
torch, CUDA or their headers.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _warn(msg: str) -> None:
    print(f"dllm_core setup.py: WARNING: {msg}", file=sys.stderr)


def _extension_kwargs() -> dict:
    if os.environ.get("DLLM_CORE_SKIP_EXTENSION") == "1":
        _warn("DLLM_CORE_SKIP_EXTENSION=1: not building dllm_core._C (the plain-PyTorch references will serve)")
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        _warn(f"torch is not importable at build time ({exc}); building without dllm_core._C. "
              "For the compiled ops, install with `pip install --no-build-isolation .` where torch is installed.")
        return {}

    use_cuda = (os.environ.get("DLLM_CORE_USE_CUDA", "1") != "0" and torch.version.cuda is not None
                and cpp_extension.CUDA_HOME is not None)
    debug = os.environ.get("DEBUG", "0") == "1"
    # The limited C API (one abi3 wheel for all Pythons) works because _C has no pybind11 bindings.
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    limited_api = (major, minor) >= (2, 6)

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O0", "-g"] if debug else ["-O3", "-g0"]  # -g0: no debug info from the interpreter's CFLAGS
    # torch's BuildExtension adds the C++ standard and, for py_limited_api, -DPy_LIMITED_API itself.
    extra = {"cxx": cxx}
    if use_cuda:
        sources += rel("csrc/cuda/*.cpp") + rel("csrc/cuda/*.cu")
        nvcc = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
        nvcc += ["--expt-relaxed-constexpr", "-Xptxas=-warn-spills"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # With explicit -gencode flags torch adds none of its own.
            nvcc += ["-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_90,code=compute_90"]
        extra["nvcc"] = nvcc
        ext_cls = cpp_extension.CUDAExtension
    else:
        if os.environ.get("DLLM_CORE_USE_CUDA", "1") != "0" and torch.version.cuda is not None:
            _warn("torch has CUDA but no CUDA toolkit was found (set CUDA_HOME): building the CPU kernels only")
        ext_cls = cpp_extension.CppExtension
    ext = ext_cls("dllm_core._C", sources, extra_compile_args=extra, py_limited_api=limited_api)
    kwargs = {"ext_modules": [ext], "cmdclass": {"build_ext": cpp_extension.BuildExtension}}
    if limited_api:
        kwargs["options"] = {"bdist_wheel": {"py_limited_api": "cp310"}}
    return kwargs


setup(**_extension_kwargs())
