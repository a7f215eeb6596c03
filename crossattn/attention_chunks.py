"""Block sizes of the memory-linear attention path: how many queries and keys one step touches.

Softmax attention over N queries and Nk keys needs an N x Nk score matrix when written out.
The chunked path (paddle's twin; torch's fused kernel does the same inside) works on blocks of
`query_chunk` x `key_chunk` scores, so its memory is the inputs and outputs plus a bounded
block, linear in N. Keys are split (and the online softmax carries a running maximum and sum
per query) only when a single query row over the batch would exceed the budget.
"""

from __future__ import annotations

#: score elements (over the whole batch) one block may hold: 2**18, 1 MiB in float32
SCORE_BUDGET = 1 << 18


def attention_chunks(batch: int, queries: int, keys: int, budget: int = SCORE_BUDGET,
                     max_key_chunk: int | None = None) -> tuple[int, int]:
    """(query_chunk, key_chunk) with batch * query_chunk * key_chunk <= max(budget, batch).

    At least one query and one key per block: a batch wider than the budget still runs.
    """
    key_chunk = max(1, min(keys, budget // max(1, batch)))
    if max_key_chunk is not None:
        key_chunk = max(1, min(key_chunk, max_key_chunk))
    query_chunk = max(1, min(queries, budget // max(1, batch * key_chunk)))
    return query_chunk, key_chunk
