"""Context mixing for DNA: the Titans model's next-base probabilities mixed, base by base, with
online k-mer and repeat models of the record being read.

The Titans memory learns while it reads, but a 256-base attention window and a small MLP memory do
not copy: a repeat met again thousands of bases later (an Alu, a satellite, an IS element, the
inverted copy of an operon) costs the model nearly full price (benchmarks/repeat_distance.py,
benchmarks/copying.py). Specialised DNA compressors (XM, GeCo) win there with models that do copy.
This module runs such models beside the Titans model and mixes all of them:

    experts i = 0 … E-1, each a distribution p_i(· | x_<t) over A, C, G, T:
      0          the Titans model (its A/C/G/T probabilities, renormalised)
      k-mer      order-k counts of the record so far, both strands: p(s) = (n_s + α_k) / (n + 4 α_k)
      repeat     follow an earlier copy of the current k-mer (forward, or reverse-complemented
                 for inverted repeats; several experts per k follow different copies) and predict
                 the base after (before) it, tolerating substitutions; its confidence is learned
                 from its own hit rate
    mixture    p(s) ∝ exp( Σ_i w_{c,i,σ_i} log p_i(s) )           (geometric mixing)
               the weights are chosen by a small context c (how sure the repeat experts and the
               model are) and each expert's own state σ_i, and learned online by gradient descent
               on the log loss:  w ← w + λ (log p_i(x_t) − Σ_s p(s) log p_i(s))

Everything is causal: the prediction of base t uses bases before t only, and the models learn from
base t after it is scored. The final probability of base x is P_model(ACGT) · p(x): the model's own
mass on N and specials is kept, so the bits stay those of a proper distribution over the model's
vocabulary. N (and any non-ACGT token) is not scored here and resets the k-mer context.

State per record: a ring buffer of past bases and hashed tables sized to the record (at most
`capacity_bits`); memory stays bounded however long the record (repeats further back than the ring
are not found). Speed: about 180,000 bases/s on one core (benchmarks/context_mixing.py); E. coli's
4.64 Mbp take 17 s more with the mixer than without on a 2-core Intel Xeon, where it runs beside the
model's next step (88.4 against 71.3 s, benchmarks/speed_cpu.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from titans_cli.model.tokenizers import DNATokenizer

# Token ids of A, C, G, T: consecutive from FIRST_BASE, in that order (DNATokenizer's alphabet). The
# mixer scores these tokens only, and reads the model's probabilities of them in that order.
FIRST_BASE = DNATokenizer().base_ids["A"]
BASE_IDS = slice(FIRST_BASE, FIRST_BASE + 4)

# Orders of the k-mer experts; up to DIRECT_BITS / 2 they index their table directly.
ORDERS = np.array([1, 2, 3, 4, 6, 8, 11, 12, 14, 16, 18, 20, 24], dtype=np.int64)
# Repeat experts: (k, direction) with +1 a forward copy, -1 a reverse-complemented one; several
# experts of one (k, direction) follow different earlier copies.
_COPIES = ((11, 2), (12, 3), (14, 2), (16, 2), (20, 1), (24, 1), (32, 1))
REPEAT_K = np.array([k for _ in (1, -1) for k, n in _COPIES for _ in range(n)], dtype=np.int64)
REPEAT_DIR = np.array([d for d in (1, -1) for _, n in _COPIES for _ in range(n)], dtype=np.int64)
TABLE_K = np.array([k for k, _ in _COPIES], dtype=np.int64)  # k-mers whose recent positions are indexed
DEPTH = 4  # positions kept per k-mer (the most recent first)
REPEAT_TABLE = np.array([int(np.flatnonzero(TABLE_K == k)[0]) for k in REPEAT_K], dtype=np.int64)
_POSITION_MASK = (1 << 31) - 1  # positions are kept modulo 2^31 (int32); the ring is far shorter
N_EXPERTS = 1 + len(ORDERS) + len(REPEAT_K)
N_STATES = 20  # per-expert states that select its weight
N_CONTEXTS = 6 * 4  # mixer contexts: repeat confidence bucket x model confidence bucket
LEN_BUCKETS, MISS_MAX = 9, 16
MAX_MISSES = 12  # a repeat expert gives up after more misses than this among its last 16 predictions

_MULT = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _slot(value, k, bits):
    """(table index, 8-bit check) of a 2k-bit k-mer value."""
    h = (value + np.uint64(k) * np.uint64(0x632BE59BD9B4E019)) * _MULT
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    return np.int64(h >> np.uint64(64 - bits)), np.uint8((h >> np.uint64(8)) & np.uint64(0xFF))


@njit(cache=True, inline="always")
def _length_bucket(n):
    if n < 16:
        return 0
    if n < 24:
        return 1
    if n < 32:
        return 2
    if n < 48:
        return 3
    if n < 64:
        return 4
    if n < 128:
        return 5
    if n < 256:
        return 6
    if n < 512:
        return 7
    return 8


@njit(cache=True, inline="always")
def _misses(history):
    n = 0
    while history:
        history &= history - 1
        n += 1
    return n


@njit(cache=True, inline="always")
def _kmer(forward, k):
    return forward if k == 32 else forward & ((np.uint64(1) << np.uint64(2 * k)) - np.uint64(1))


@njit(cache=True, inline="always")
def _row(direct, value, k, bits):
    """(row, 8-bit check) of a k-mer value in an order's table: the value itself where the order
    indexes its 4^k rows directly (no check needed), else its hashed slot."""
    if direct:
        return np.int64(value), np.uint8(0)
    return _slot(value, k, bits)


@njit(cache=True, inline="always")
def _count(counts, checks, offsets, direct, caps, o, index, check, x):
    """One more x after the context in row `index` of order o's table (a hashed row whose check
    differs belonged to another context: it starts afresh)."""
    row = offsets[o] + 4 * index
    if not direct[o] and checks[offsets[o] // 4 + index] != check:
        checks[offsets[o] // 4 + index] = check
        for s in range(4):
            counts[row + s] = 0
    if counts[row + x] >= caps[o]:
        for s in range(4):
            counts[row + s] = counts[row + s] // 2
    counts[row + x] += 1


@njit(cache=True, nogil=True)
def _mix(bases, probs, out, ring, counts, checks, offsets, direct, alphas, caps, positions, match, hit_p, hit_n,
         weights, seen, scalars, table_bits, position_bits, ring_mask, lr_start, lr_floor, kmers, repeats):  # fmt: skip
    """Score bases (codes: 0..3 = A C G T, anything else unscored) with probs (n, 4) from the model;
    bits of each A/C/G/T into out (others untouched). All state lives in the arrays passed in; scalars holds
    [position, forward k-mer bits, reverse-complement bits, bases since the last N]. kmers / repeats
    False leave those experts out (benchmarks/context_mixing.py's ablations)."""
    n_orders = ORDERS.shape[0] if kmers else 0
    n_repeat = match.shape[0] if repeats else 0
    n_in = 1 + n_orders + n_repeat
    position = scalars[0]
    forward = np.uint64(scalars[1])
    reverse = np.uint64(scalars[2])
    run = scalars[3]
    logs = np.zeros((n_in, 4))
    state = np.zeros(n_in, dtype=np.int64)
    index = np.zeros(n_orders, dtype=np.int64)
    check = np.zeros(n_orders, dtype=np.uint8)
    expected = np.full(n_repeat, -1, dtype=np.int64)
    cell = np.zeros(n_repeat, dtype=np.int64)
    dot = np.zeros(4)
    mixed = np.zeros(4)
    ring_size = ring_mask + 1
    for t in range(bases.shape[0]):
        x = bases[t]
        if x < 0 or x > 3:  # N or a special: not scored; contexts restart after it
            forward = np.uint64(0)
            reverse = np.uint64(0)
            run = 0
            for m in range(n_repeat):
                match[m, 0] = -1
            continue
        # -- predict: the model ------------------------------------------------------------
        total = 0.0
        for s in range(4):
            total += probs[t, s]
        top = 0.0
        for s in range(4):
            q = max(probs[t, s] / total, 1e-6) if total > 0 else 0.25
            top = max(top, q)
            logs[0, s] = math.log(q)
        state[0] = min(int(top * N_STATES), N_STATES - 1)
        model_bucket = 0 if top < 0.35 else (1 if top < 0.5 else (2 if top < 0.7 else 3))
        # -- the k-mer experts --------------------------------------------------------------
        for o in range(n_orders):
            k = ORDERS[o]
            j = 1 + o
            if run < k:  # not enough bases since the start (or the last N)
                state[j] = 0
                for s in range(4):
                    logs[j, s] = 0.0
                index[o] = -1
                continue
            index[o], check[o] = _row(direct[o], _kmer(forward, k), k, table_bits)
            known = direct[o] or checks[offsets[o] // 4 + index[o]] == check[o]
            row = offsets[o] + 4 * index[o]
            n = 0
            most = 0
            if known:
                for s in range(4):
                    c = np.int64(counts[row + s])
                    n += c
                    most = max(most, c)
            alpha = alphas[o]
            for s in range(4):
                c = np.int64(counts[row + s]) if known else 0
                logs[j, s] = math.log((c + alpha) / (n + 4.0 * alpha))
            bucket = 0 if n == 0 else (1 if n == 1 else (2 if n == 2 else (3 if n < 5 else (4 if n < 9 else (
                5 if n < 17 else (6 if n < 40 else 7))))))  # fmt: skip
            state[j] = 2 * bucket + (1 if (n > 0 and most == n) else 0)
        # -- the repeat experts -------------------------------------------------------------
        best = 0.0
        for m in range(n_repeat):
            j = 1 + n_orders + m
            p = match[m, 0]
            if p < 0:
                expected[m] = -1
                state[j] = 0
                for s in range(4):
                    logs[j, s] = 0.0
                continue
            base = np.int64(ring[p & ring_mask])
            e = base if REPEAT_DIR[m] > 0 else 3 - base
            expected[m] = e
            lb = _length_bucket(match[m, 1])
            miss = _misses(match[m, 2])
            cell[m] = lb * (MISS_MAX + 1) + miss
            h = hit_p[m, cell[m]]
            other = math.log((1.0 - h) / 3.0)
            for s in range(4):
                logs[j, s] = other
            logs[j, e] = math.log(h)
            best = max(best, h)
            state[j] = 1 + 2 * min(lb, 8) + (1 if miss > 0 else 0)
        repeat_bucket = 0 if best == 0.0 else (1 if best < 0.5 else (2 if best < 0.7 else (
            3 if best < 0.85 else (4 if best < 0.95 else 5))))  # fmt: skip
        c = repeat_bucket * 4 + model_bucket
        # -- mix -----------------------------------------------------------------------------
        top = -1e300
        for s in range(4):
            d = 0.0
            for j in range(n_in):
                d += weights[c, j, state[j]] * logs[j, s]
            dot[s] = d
            top = max(top, d)
        z = 0.0
        for s in range(4):
            mixed[s] = math.exp(dot[s] - top)
            z += mixed[s]
        for s in range(4):
            mixed[s] = max(mixed[s] / z, 1e-9)
        out[t] = -math.log2(total * mixed[x]) if total > 0 else -math.log2(0.25 * mixed[x])
        # -- learn ---------------------------------------------------------------------------
        seen[c] += 1.0
        rate = max(lr_floor, lr_start / math.sqrt(1.0 + seen[c] / 256.0))
        for j in range(n_in):
            expectation = 0.0
            for s in range(4):
                expectation += mixed[s] * logs[j, s]
            weights[c, j, state[j]] += rate * (logs[j, x] - expectation)
        for o in range(n_orders):
            if index[o] >= 0:
                _count(counts, checks, offsets, direct, caps, o, index[o], check[o], x)
        for m in range(n_repeat):
            if expected[m] < 0:
                continue
            hit = 1.0 if expected[m] == x else 0.0
            hit_n[m, cell[m]] += 1.0
            hit_p[m, cell[m]] += (hit - hit_p[m, cell[m]]) / min(hit_n[m, cell[m]] + 1.5, 512.0)
            hit_p[m, cell[m]] = min(max(hit_p[m, cell[m]], 1e-4), 1.0 - 1e-4)
            history = (match[m, 2] << 1) & 0xFFFF
            if hit > 0:
                match[m, 1] += 1
            else:
                history |= 1
                match[m, 1] = match[m, 1] // 4
            match[m, 2] = history
            if _misses(history) > MAX_MISSES:
                match[m, 0] = -1
            else:
                match[m, 0] += REPEAT_DIR[m]
        # -- the base joins the context ------------------------------------------------------
        ring[position & ring_mask] = x
        forward = (forward << np.uint64(2)) | np.uint64(x)
        reverse = (reverse >> np.uint64(2)) | (np.uint64(3 - x) << np.uint64(62))
        run += 1
        position += 1
        # the k-mer tables learn the other strand too: there the reverse complement of the last k
        # bases is followed by the complement of the base before them
        for o in range(n_orders):
            k = ORDERS[o]
            if run <= k:
                continue
            row, tag = _row(direct[o], reverse >> np.uint64(64 - 2 * k), k, table_bits)
            _count(counts, checks, offsets, direct, caps, o, row, tag, 3 - np.int64(ring[(position - 1 - k) & ring_mask]))
        # repeat experts: drop a copy that ran out of the ring (or past the start), look up a new one
        for m in range(n_repeat):
            p = match[m, 0]
            if p >= 0 and (p >= position or position - p >= ring_size - 64):
                match[m, 0] = -1
            k = REPEAT_K[m]
            if run < k:
                continue
            if match[m, 0] >= 0 and match[m, 2] == 0:
                continue  # a copy that has not missed lately is kept
            if REPEAT_DIR[m] > 0:
                slot, _ = _slot(_kmer(forward, k), k, position_bits)
            else:  # the reverse complement of the last k bases
                slot, _ = _slot(reverse >> np.uint64(64 - 2 * k), k, position_bits)
            oldest = max(position - ring_size + 64, 0)  # bases before it are overwritten in the ring
            best_length, best_candidate = 0, -1
            for depth in range(DEPTH):  # the earlier copies of that k-mer, the most recent first
                stored = np.int64(positions[REPEAT_TABLE[m], slot, depth])
                if stored == 0:
                    break
                # the position after the copy (kept modulo 2^31)
                after = position - ((position - (stored - 1)) & _POSITION_MASK)
                if after <= oldest or after >= position:
                    continue
                length = 0
                if REPEAT_DIR[m] > 0:  # verify: the bases before `after` are the last bases read
                    while length < 400 and after - 1 - length >= oldest:
                        if ring[(after - 1 - length) & ring_mask] != ring[(position - 1 - length) & ring_mask]:
                            break
                        length += 1
                    candidate = after
                else:  # an inverted copy: bases [after - k, after) are the reverse complement of the last k
                    start = after - k
                    while length < 400 and start >= oldest and start + length < position - 1 - length:
                        if ring[(start + length) & ring_mask] != 3 - ring[(position - 1 - length) & ring_mask]:
                            break
                        length += 1
                    candidate = start - 1
                if length < k or candidate < 0 or length <= best_length:
                    continue
                taken = False  # another expert of this k and direction already follows it
                for other in range(n_repeat):
                    if match[other, 0] == candidate and REPEAT_K[other] == k and REPEAT_DIR[other] == REPEAT_DIR[m]:
                        taken = True
                if not taken:
                    best_length, best_candidate = length, candidate
            if best_candidate >= 0 and (match[m, 0] < 0 or best_length > match[m, 1]):
                match[m, 0] = best_candidate
                match[m, 1] = best_length
                match[m, 2] = 0
        # the tables learn where each k-mer ended (the most recent DEPTH positions)
        for r in range(TABLE_K.shape[0]):
            k = TABLE_K[r]
            if run >= k:
                slot, _ = _slot(_kmer(forward, k), k, position_bits)
                for depth in range(DEPTH - 1, 0, -1):
                    positions[r, slot, depth] = positions[r, slot, depth - 1]
                positions[r, slot, 0] = np.int32(((position & _POSITION_MASK) + 1) & _POSITION_MASK)
    scalars[0] = position
    scalars[1] = np.int64(forward)
    scalars[2] = np.int64(reverse)
    scalars[3] = run


class ContextMixer:
    """The mixer of one record, fed in order: `bits(tokens, probs)` scores the next tokens.

    capacity: the record's length when known (sizes the tables; None: the largest)."""

    DIRECT_BITS = 16  # k-mer experts of order <= 8 index 4^k rows directly

    def __init__(self, capacity: int | None = None, capacity_bits: int = 22, ring_bits: int = 26,
                 kmers: bool = True, repeats: bool = True):
        need = 22 if capacity is None else max(12, math.ceil(math.log2(max(capacity, 2))) + 1)
        self.table_bits = min(capacity_bits, need)
        ring = min(ring_bits, max(12, need + 1))
        orders = ORDERS
        self.direct = np.array([2 * k <= self.DIRECT_BITS for k in orders])
        # one flat table of 4 counts per row: 4^k rows for a direct order, 2^table_bits for a hashed one
        rows = [4**k if direct else 1 << self.table_bits for k, direct in zip(orders, self.direct)]
        self.offsets = 4 * np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        self.counts = np.zeros(4 * sum(rows), dtype=np.uint8)
        self.checks = np.zeros(sum(rows), dtype=np.uint8)  # (used by the hashed rows)
        self.alphas = np.array([0.5 if k <= 8 else 0.25 for k in orders])
        self.caps = np.full(len(orders), 255, dtype=np.int64)
        self.position_bits = min(self.table_bits, 20)
        self.positions = np.zeros((len(TABLE_K), 1 << self.position_bits, DEPTH), dtype=np.int32)
        self.ring = np.zeros(1 << ring, dtype=np.uint8)
        self.ring_mask = (1 << ring) - 1
        self.match = np.zeros((len(REPEAT_K), 3), dtype=np.int64)
        self.match[:, 0] = -1
        cells = LEN_BUCKETS * (MISS_MAX + 1)
        self.hit_p = np.full((len(REPEAT_K), cells), 0.75)  # how often each kind of copy is right
        self.hit_n = np.zeros((len(REPEAT_K), cells))
        self.weights = np.zeros((N_CONTEXTS, N_EXPERTS, N_STATES))
        self.weights[:, 0, :] = 1.0  # start from the model alone
        self.seen = np.zeros(N_CONTEXTS)
        self.scalars = np.zeros(4, dtype=np.int64)
        self.lr_start, self.lr_floor = 0.02, 0.002
        self.kmers, self.repeats = kmers, repeats

    def bits(self, tokens: np.ndarray, probs: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
        """Bits of each token under the mixture (float32); tokens other than A C G T keep
        `fallback` (the model's own bits) or NaN."""
        bases = np.asarray(tokens, dtype=np.int64) - FIRST_BASE
        probs = np.ascontiguousarray(probs, dtype=np.float64)
        out = np.full(len(bases), np.nan) if fallback is None else np.asarray(fallback, dtype=np.float64).copy()
        _mix(bases, probs, out, self.ring, self.counts, self.checks, self.offsets, self.direct, self.alphas, self.caps,
             self.positions, self.match, self.hit_p, self.hit_n, self.weights, self.seen, self.scalars,
             self.table_bits, self.position_bits, self.ring_mask, self.lr_start, self.lr_floor, self.kmers,
             self.repeats)
        return out.astype(np.float32)


def is_base(tokens: np.ndarray) -> np.ndarray:
    """Which tokens are A, C, G or T (the ones the mixer scores)."""
    return (tokens >= FIRST_BASE) & (tokens < FIRST_BASE + 4)


def mix_bits(tokens: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Bits of every token of one whole record under context mixing (NaN where not A C G T)."""
    return ContextMixer(len(tokens)).bits(tokens, probs)
