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

// ---- fused per-layer element-wise ops (RMSNorm, residual add + RMSNorm, SwiGLU product, q RoPE) ----
// A fragment of its own so that these schemas merge independently of the block above.
TORCH_LIBRARY_FRAGMENT(dllm_core, m) {
  // Returns RMSNorm(x) in x's dtype: float32 statistics, normalised value cast to the dtype, then weight *.
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  // Returns (sum = x + delta rounded to the dtype, RMSNorm(sum)).
  m.def("add_rms_norm(Tensor x, Tensor delta, Tensor weight, float eps) -> (Tensor, Tensor)");
  // gate_up (..., 2I) = [gate | up]; returns silu(gate) * up (..., I) with the element-wise roundings.
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  // Returns RoPE(x) (B, n, H, D) contiguous for x (B, n, H, D) (any strides), positions (B, n) int64.
  m.def("rope(Tensor x, Tensor positions, float theta) -> Tensor");
}
