"""Exact top-k inner-product search of one query against a fixed memory bank.

A guard's kNN score reads the whole bank per query: 4,096 x 512 float32 prototypes are 8 MB,
more than a core's cache, so one query's ``q @ bank.T`` is bound by memory bandwidth, and
after the encoder's pass over its own weights nothing of the bank is left in the cache
(~0.3 ms of a ~1.5 ms verdict on the 2-core machine). :class:`Int8Bank` keeps an int8 copy
of the bank (per-row scales, a quarter of the bytes) and searches in two passes:

1. the query, quantised to 8 bits, against the int8 bank with onnxruntime's integer GEMM
   (``MatMulInteger``: exact int32 sums; numpy has no fast integer or half-precision
   product). With ``q^`` and ``b^`` the dequantised vectors,
   ``|q.b - q^.b^| <= |q| |b - b^| + |q - q^| |b^|`` per row, every term known;
2. every row whose upper bound reaches the k-th largest lower bound is a candidate (the
   true top k are always among them; typically a few dozen of 4,096 rows); their
   similarities are computed again in float32 from the original rows, as the one-pass
   product computes them, and the k largest are averaged.

Both passes run as one onnxruntime graph: one call from Python, no numpy temporaries. The
result is the one-pass float32 top-k mean up to the rounding of the products (~1e-7).
Batches (evaluation, fitting) keep the one-pass matrix product, which reads the bank once
for many queries anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Int8Bank"]

#: absolute slack on the bound: covers the float32 rounding of the graph's products and
#: sums (below 1e-6 for unit vectors of a few hundred dimensions)
_SLACK = 1e-5


class Int8Bank:
    """A read-only bank ``(n, d)`` with the exact two-pass top-``k`` search (module doc)."""

    def __init__(self, bank: np.ndarray, k: int) -> None:
        import onnxruntime as ort

        B = np.ascontiguousarray(bank, dtype=np.float32)
        if B.ndim != 2 or B.shape[0] == 0:
            raise ValueError(f"Int8Bank needs a non-empty (n, d) bank, got shape {B.shape}")
        self.bank = B
        self.k = min(int(k), B.shape[0])
        if self.k < 1:
            raise ValueError("Int8Bank needs k >= 1")
        B64 = B.astype(np.float64)
        scale = np.abs(B64).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        Bq = np.clip(np.rint(B64 / scale[:, None]), -127, 127).astype(np.int8)
        approx = Bq.astype(np.float64) * scale[:, None]
        err = np.linalg.norm(B64 - approx, axis=1)  # |b - b^| per row
        norm = np.linalg.norm(approx, axis=1)  # |b^| per row
        so = ort.SessionOptions()
        # one query at a time on a small shared CPU: one thread, never spinning when idle
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self._sess = ort.InferenceSession(_search_graph(B, Bq, scale, err, norm, self.k),
                                          sess_options=so, providers=["CPUExecutionProvider"])

    def topk_mean(self, q: np.ndarray) -> float:
        """Mean of the ``k`` largest ``q . bank[i]`` (``q``: (d,)), as ``q @ bank.T`` gives
        them in float32 (up to the rounding of the products)."""
        q32 = np.ascontiguousarray(q, dtype=np.float32).reshape(1, -1)
        (out,) = self._sess.run(["topk_mean"], {"q": q32})
        return float(out[0])


def _search_graph(bank: np.ndarray, Bq: np.ndarray, scale: np.ndarray, err: np.ndarray,
                  norm: np.ndarray, k: int) -> bytes:
    """The two passes as an ONNX graph ``q (1, d) float32 -> topk_mean (1,)``: the query
    quantised to 8 bits (onnxruntime's DynamicQuantizeLinear, uint8 with a zero point;
    the bound uses the dequantised query it actually gave), the integer product, the
    per-row bound, the candidates, their float32 similarities, the mean of the top k.
    Few nodes: every node costs a few microseconds of dispatch on a cold cache."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: Any, dtype: Any = np.float32) -> Any:
        return numpy_helper.from_array(np.array(value, dtype=dtype, order="C"), name)

    d = bank.shape[1]
    N = helper.make_node
    nodes = [
        N("DynamicQuantizeLinear", ["q"], ["q_u8", "s_q", "z_q"]),
        N("MatMulInteger", ["q_u8", "bank_q", "z_q"], ["dot"]),  # exact int32, (1, n)
        N("Cast", ["dot"], ["dot_f"], to=TensorProto.FLOAT),
        N("Mul", ["scale", "s_q"], ["row_scale"]),
        N("Mul", ["dot_f", "row_scale"], ["approx"]),  # q^ . b^ per row
        # bound per row: [|q|, |q - q^|, 1] @ [|b - b^|; |b^|; slack]
        N("DequantizeLinear", ["q_u8", "s_q", "z_q"], ["q_hat"]),
        N("Sub", ["q", "q_hat"], ["q_err"]),
        N("ReduceL2", ["q"], ["qn"], keepdims=1),
        N("ReduceL2", ["q_err"], ["dq"], keepdims=1),
        N("Concat", ["qn", "dq", "one"], ["coef"], axis=1),
        N("MatMul", ["coef", "bound_rows"], ["bound"]),
        N("Sub", ["approx", "bound"], ["lower"]),
        N("Add", ["approx", "bound"], ["upper"]),
        # a row is a candidate when its upper bound reaches the k-th largest lower bound
        N("TopK", ["lower", "k"], ["top_lower", "top_lower_idx"], axis=1, largest=1,
          sorted=1),
        N("ReduceMin", ["top_lower", "axis1"], ["floor"], keepdims=1),
        N("GreaterOrEqual", ["upper", "floor"], ["is_cand"]),
        N("NonZero", ["is_cand"], ["cand_2d"]),  # (2, c): row 0, column
        N("Gather", ["cand_2d", "second"], ["cand"], axis=0),  # (c,)
        N("Gather", ["bank", "cand"], ["rows"], axis=0),  # (c, d)
        N("Gemm", ["q", "rows"], ["sims"], transB=1),  # float32, as q @ bank.T; (1, c)
        N("TopK", ["sims", "k"], ["top_sims", "top_sims_idx"], axis=1, largest=1, sorted=1),
        N("ReduceMean", ["top_sims", "axis1"], ["topk_mean"], keepdims=0),
    ]
    # the bound terms get a relative slack too (their own float32 rounding)
    bound_rows = np.stack([err * (1 + 1e-5), norm * (1 + 1e-5),
                           np.full(err.shape, _SLACK)])
    inits = [
        const("bank", bank), const("bank_q", Bq.T, np.int8), const("scale", scale),
        const("bound_rows", bound_rows), const("k", [k], np.int64),
        const("axis1", [1], np.int64), const("second", 1, np.int64),
        const("one", [[1.0]]),
    ]
    graph = helper.make_graph(
        nodes, "int8_bank_topk",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, d])],
        [helper.make_tensor_value_info("topk_mean", TensorProto.FLOAT, [1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return bytes(model.SerializeToString())
