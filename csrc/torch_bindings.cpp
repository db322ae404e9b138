// Schemas of the dllm_core compiled ops: the one place where their signatures live.
//
// Kernels register separately (csrc/cpu/*.cpp for CPU, csrc/cuda/cuda_ops.cpp for CUDA) with
// TORCH_LIBRARY_IMPL.  The Python references in dllm_core/ops/*.py define the semantics; the
// shape rules for torch.compile are the register_fake functions in dllm_core/ops/extension.py.
//
// The module has no pybind11 bindings: Python imports `dllm_core._C` only so that the dynamic
// loader runs the static registrars below, and every op is reached through torch.ops.dllm_core.

#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty module: importing it loads this shared object, which is all we need.  Written against
// the limited C API, so one abi3 build serves every Python version.
PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",   // m_name
      "dllm_core compiled ops; reach them through torch.ops.dllm_core",  // m_doc
      -1,     // m_size: no per-interpreter state
      nullptr // m_methods
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(dllm_core, m) {
  // Writes RoPE(k) and v into rows `rows` of the (B, T, Hkv, D) caches (in place).
  m.def(
      "kv_cache_update(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor rows, "
      "Tensor positions, float theta) -> ()");
  // Returns (out (B, q, H, D) in q's dtype, head-mean probabilities (B, q, T) float32 or empty).
  m.def(
      "partial_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor key_mask, float scale, "
      "bool return_probs) -> (Tensor, Tensor)");
  // Returns (scores (B, G) float32, top (B, min(k, G)) int64).
  m.def(
      "certainty_density_topk(Tensor known, Tensor confidence, Tensor candidates, float sigma, "
      "int k) -> (Tensor, Tensor)");
  // Returns (token int64, prob float32), both logits.shape[:-1]: argmax over the last dim and its
  // softmax probability, with vocabulary id `exclude` read as -inf (exclude < 0: none).
  m.def("argmax_confidence(Tensor logits, int exclude) -> (Tensor, Tensor)");
}
