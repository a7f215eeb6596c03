"""Softmax attention without the N x Nk matrix, PaddlePaddle twin of torch_impl/blocks/attention.py.

paddle 3.3's scaled_dot_product_attention falls back to the explicit math kernel on CPU, so the
fused path is written here: queries in chunks, keys in blocks with an online softmax (a running
maximum m and sum l per query), and a backward that recomputes each block's probabilities from
the saved log-sum-exp instead of storing them. Forward and backward hold the inputs, the output,
one log-sum-exp per query and a block of scores (crossattn.attention_chunks): linear in N.
"""

from __future__ import annotations

import paddle
from paddle.autograd import PyLayer

from crossattn.attention_chunks import attention_chunks


def fused_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float) -> paddle.Tensor:
    """softmax(scale * q k^T) v for q (B, N, E), k (B, Nk, E), v (B, Nk, Ev) -> (B, N, Ev)."""
    query_chunk, key_chunk = attention_chunks(q.shape[0], q.shape[1], k.shape[1])
    return _ChunkedAttention.apply(q, k, v, float(scale), query_chunk, key_chunk)


def _blocks(length: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, length)) for start in range(0, length, size)]


class _ChunkedAttention(PyLayer):
    @staticmethod
    def forward(ctx, q, k, v, scale, query_chunk, key_chunk):
        outputs, lses = [], []
        for q0, q1 in _blocks(q.shape[1], query_chunk):
            q_block = q[:, q0:q1]
            running_max = running_sum = acc = None
            for k0, k1 in _blocks(k.shape[1], key_chunk):
                scores = paddle.matmul(q_block, k[:, k0:k1], transpose_y=True) * scale  # (B, c, kc)
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
        ctx.save_for_backward(q, k, v, out, paddle.concat(lses, axis=1))
        ctx.scale, ctx.query_chunk, ctx.key_chunk = scale, query_chunk, key_chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensor()
        scale = ctx.scale
        grad_q_blocks = []
        grad_k = paddle.zeros_like(k)
        grad_v = paddle.zeros_like(v)
        for q0, q1 in _blocks(q.shape[1], ctx.query_chunk):
            q_block, go_block = q[:, q0:q1], grad_out[:, q0:q1]
            delta = (go_block * out[:, q0:q1]).sum(axis=-1, keepdim=True)  # (B, c, 1): rowsum(dO * O)
            grad_q_block = paddle.zeros_like(q_block)
            for k0, k1 in _blocks(k.shape[1], ctx.key_chunk):
                k_block, v_block = k[:, k0:k1], v[:, k0:k1]
                probs = paddle.exp(paddle.matmul(q_block, k_block, transpose_y=True) * scale - lse[:, q0:q1])
                grad_v[:, k0:k1] += paddle.matmul(probs, go_block, transpose_x=True)
                grad_scores = probs * (paddle.matmul(go_block, v_block, transpose_y=True) - delta) * scale
                grad_q_block += paddle.matmul(grad_scores, k_block)
                grad_k[:, k0:k1] += paddle.matmul(grad_scores, q_block, transpose_x=True)
            grad_q_blocks.append(grad_q_block)
        return paddle.concat(grad_q_blocks, axis=1), grad_k, grad_v
