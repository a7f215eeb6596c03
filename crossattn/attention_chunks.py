"""Block sizes of the memory-linear attention path: how many queries and keys one step touches.

Softmax attention over N queries and Nk keys needs an N x Nk score matrix when written out.
The chunked path (paddle's twin; torch's fused kernel does the same inside) works on blocks of
`query_chunk` x `key_chunk` scores, keeping a running maximum and sum per query (online
softmax), so its memory is the inputs and outputs plus a bounded block, linear in N.
"""

from __future__ import annotations

#: score elements (over the whole batch) one block may hold: 2**19, 2 MiB in float32
SCORE_BUDGET = 1 << 19
#: widest key block; longer key sequences are swept block by block with the online softmax
MAX_KEY_CHUNK = 4096


def attention_chunks(batch: int, queries: int, keys: int, budget: int = SCORE_BUDGET,
                     max_key_chunk: int = MAX_KEY_CHUNK) -> tuple[int, int]:
    """(query_chunk, key_chunk) with batch * query_chunk * key_chunk <= budget where possible.

    At least one query per block: a batch wider than the budget still runs, one row at a time.
    """
    key_chunk = max(1, min(keys, max_key_chunk))
    query_chunk = max(1, min(queries, budget // max(1, batch * key_chunk)))
    return query_chunk, key_chunk
