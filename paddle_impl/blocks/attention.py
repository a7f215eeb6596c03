"""Softmax attention without the N x Nk matrix, PaddlePaddle twin of torch_impl/blocks/attention.py.

paddle 3.3's scaled_dot_product_attention falls back to the explicit math kernel on CPU, so the
fused path is written here: queries in chunks and, when the keys are longer than one block, keys
in blocks with an online softmax (a running maximum and sum per query). The backward recomputes
each block's probabilities (from the saved log-sum-exp when the keys span several blocks)
instead of storing them. Forward and backward hold the inputs, the output, one log-sum-exp per
query and a block of scores (crossattn.attention_chunks): linear in N.
"""

from __future__ import annotations

import paddle
from paddle.autograd import PyLayer
from paddle.nn import functional as F

from crossattn.attention_chunks import attention_chunks


def fused_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float) -> paddle.Tensor:
    """softmax(scale * q k^T) v for q (B, N, E), k (B, Nk, E), v (B, Nk, Ev) -> (B, N, Ev)."""
    query_chunk, key_chunk = attention_chunks(q.shape[0], q.shape[1], k.shape[1])
    return _ChunkedAttention.apply(q, k, v, float(scale), query_chunk, key_chunk)


def _blocks(length: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def _scaled(q: paddle.Tensor, scale: float) -> paddle.Tensor:
    """The scale folded into the (N, E) queries rather than applied to every (N, Nk) score."""
    return q if scale == 1.0 else q * scale


class _ChunkedAttention(PyLayer):
    @staticmethod
    def forward(ctx, q, k, v, scale, query_chunk, key_chunk):
        queries = _scaled(q, scale)
        key_blocks = _blocks(k.shape[1], key_chunk)
        outputs, lses = [], []
        for q0, q1 in _blocks(q.shape[1], query_chunk):
            q_block = queries[:, q0:q1]
            if len(key_blocks) == 1:  # every key in one block: paddle's softmax kernel, nothing to carry
                probs = F.softmax(paddle.matmul(q_block, k, transpose_y=True), axis=-1)
                outputs.append(paddle.matmul(probs, v))
                continue
            running_max = running_sum = acc = None
            for k0, k1 in key_blocks:
                scores = paddle.matmul(q_block, k[:, k0:k1], transpose_y=True)  # (B, c, kc)
                block_max = scores.max(axis=-1, keepdim=True)
                new_max = block_max if running_max is None else paddle.maximum(running_max, block_max)
                probs = paddle.exp(scores - new_max)
                block_acc = paddle.matmul(probs, v[:, k0:k1])
                if running_max is None:
                    running_sum, acc = probs.sum(axis=-1, keepdim=True), block_acc
                else:
                    rescale = paddle.exp(running_max - new_max)
                    running_sum = running_sum * rescale + probs.sum(axis=-1, keepdim=True)
                    acc = acc * rescale + block_acc
                running_max = new_max
            outputs.append(acc / running_sum)
            lses.append(running_max + paddle.log(running_sum))
        out = paddle.concat(outputs, axis=1)
        lse = paddle.concat(lses, axis=1) if lses else paddle.zeros([0], dtype=q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.query_chunk, ctx.key_chunk = scale, query_chunk, key_chunk
        ctx.needs_grad = tuple(not t.stop_gradient for t in (q, k, v))  # paddle wants None for the others
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensor()
        queries = _scaled(q, ctx.scale)
        key_blocks = _blocks(k.shape[1], ctx.key_chunk)
        grad_query_blocks, grad_k_blocks, grad_v_blocks = [], [None] * len(key_blocks), [None] * len(key_blocks)
        for q0, q1 in _blocks(q.shape[1], ctx.query_chunk):
            q_block, go_block = queries[:, q0:q1], grad_out[:, q0:q1]
            delta = (go_block * out[:, q0:q1]).sum(axis=-1, keepdim=True)  # (B, c, 1): rowsum(dO * O)
            grad_q_block = None
            for index, (k0, k1) in enumerate(key_blocks):
                k_block, v_block = (k, v) if len(key_blocks) == 1 else (k[:, k0:k1], v[:, k0:k1])
                scores = paddle.matmul(q_block, k_block, transpose_y=True)
                probs = (F.softmax(scores, axis=-1) if len(key_blocks) == 1
                         else paddle.exp(scores - lse[:, q0:q1]))
                grad_scores = probs * (paddle.matmul(go_block, v_block, transpose_y=True) - delta)
                terms = (paddle.matmul(probs, go_block, transpose_x=True),
                         paddle.matmul(grad_scores, q_block, transpose_x=True),
                         paddle.matmul(grad_scores, k_block))
                grad_v_blocks[index] = _accumulate(grad_v_blocks[index], terms[0])
                grad_k_blocks[index] = _accumulate(grad_k_blocks[index], terms[1])
                grad_q_block = _accumulate(grad_q_block, terms[2])
            grad_query_blocks.append(grad_q_block)
        grads = (_scaled(paddle.concat(grad_query_blocks, axis=1), ctx.scale),
                 paddle.concat(grad_k_blocks, axis=1), paddle.concat(grad_v_blocks, axis=1))
        return tuple(grad if needed else None for grad, needed in zip(grads, ctx.needs_grad))


def _accumulate(total: paddle.Tensor | None, term: paddle.Tensor) -> paddle.Tensor:
    return term if total is None else total + term
