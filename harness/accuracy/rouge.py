"""ROUGE-1/2/L/Lsum F-measures identical to rouge_score 0.1.2's
`RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True).score`, only faster.

Same tokenizer (rouge_score's regexes and nltk's Porter stemmer, memoized per word), same
n-gram counts, same LCS table values and the same LCS read-out (rouge_score's tie-breaking), so
every float is bit-identical; the LCS table is computed bit-parallel instead of cell by cell.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from nltk.stem import porter
from rouge_score import rouge_scorer, scoring
from rouge_score import tokenize as rs_tokenize

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class _TokenCache(dict):
    """raw token -> what rouge_score's tokenize keeps of it ("" when it drops it).

    Per raw token, rouge_score stems words longer than 3 characters with nltk's Porter stemmer
    and keeps the result only if it matches VALID_TOKEN_RE; both steps depend on the token
    alone, so the outcome is computed once per distinct token.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stemmer = porter.PorterStemmer()

    def __missing__(self, raw: str) -> str:
        token = self._stemmer.stem(raw) if len(raw) > 3 else raw
        kept = token if rs_tokenize.VALID_TOKEN_RE.match(token) else ""
        if len(self) >= 1_000_000:  # bound memory on unbounded vocabularies
            self.clear()
        self[raw] = kept
        return kept


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    if n == 1:
        return Counter(tokens)
    return Counter(zip(*(tokens[k:] for k in range(n)), strict=False))


def _ngram_fmeasure(target: Sequence[str], prediction: Sequence[str], n: int) -> float:
    """rouge_scorer._score_ngrams(...).fmeasure with the same integer counts and float ops."""
    target_counts = _ngram_counts(target, n)
    prediction_counts = _ngram_counts(prediction, n)
    common = target_counts.keys() & prediction_counts.keys()
    overlap = sum(min(target_counts[g], prediction_counts[g]) for g in common)
    precision = overlap / max(sum(prediction_counts.values()), 1)
    recall = overlap / max(sum(target_counts.values()), 1)
    return scoring.fmeasure(precision, recall)


def _match_masks(can: Sequence[str]) -> dict[str, int]:
    """token -> bit mask of its positions in `can` (bit j set: can[j] == token)."""
    masks: dict[str, int] = {}
    bit = 1
    for token in can:
        masks[token] = masks.get(token, 0) | bit
        bit <<= 1
    return masks


def lcs_rows(ref: Sequence[str], masks: dict[str, int], full: int) -> list[int]:
    """Bit-parallel LCS table (Allison-Dix / Hyyro): one int per row i = 0..len(ref).

    Row i encodes the DP row of rouge_score's `_lcs_table(ref, can)`:
    table[i][j] == j - popcount(rows[i] & ((1 << j) - 1)).
    """
    v = full
    rows = [v]
    append = rows.append
    for m in map(masks.get, ref):
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
        append(v)
    return rows


def lcs_length(ref: Sequence[str], can: Sequence[str]) -> int:
    """Length of the longest common subsequence (rouge_score `_lcs_table(ref, can)[-1][-1]`)."""
    masks = _match_masks(can)
    full = (1 << len(can)) - 1
    v = full
    for token in ref:
        m = masks.get(token)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(can) - v.bit_count()


def lcs_ref_indices(
    ref: Sequence[str],
    can: Sequence[str],
    can_masks: dict[str, int],
    full: int,
    ref_masks: dict[str, int],
) -> list[int]:
    """The `ref` positions of the one LCS that rouge_score's `_backtrack_norec` reads out.

    _backtrack_norec walks from (len(ref), len(can)): on a match it goes diagonal; else left
    iff table[i][j-1] > table[i-1][j], else up. Off a match table[i][j] is the max of those
    two, so it goes left exactly when table[i-1][j] < table[i][j]. The walk keeps
    table[i][j] == `remaining`, and its runs are jumped over, not stepped:
    - an up-run at column j ends at the nearest row above whose token is can[j-1] (a match),
      unless table drops below `remaining` first (found by bisection: table is monotone in i);
    - a left-run at row i only ends at the nearest column to the left whose token is ref[i-1].
    can_masks/ref_masks: token -> bit mask of its positions (`_match_masks`).
    """
    rows = lcs_rows(ref, can_masks, full)
    remaining = len(can) - rows[-1].bit_count()  # table[i][j] on the read-out path
    indices: list[int] = []
    i, j = len(ref), len(can)
    while remaining:  # table[i][j] > 0 implies i > 0 and j > 0
        token = can[j - 1]
        if ref[i - 1] == token:
            indices.append(i - 1)
            remaining -= 1
            i -= 1
            j -= 1
            continue
        low_j = (1 << j) - 1
        # p: nearest ref position above row i holding can[j-1] (row p + 1 is a match), or -1.
        p = (ref_masks.get(token, 0) & ((1 << (i - 1)) - 1)).bit_length() - 1
        if p >= 0 and j - (rows[p + 1] & low_j).bit_count() == remaining:
            i = p + 1  # the up-run reaches the match
            continue
        lo, hi = p + 2, i  # table[hi][j] == remaining > table[p + 1][j]
        while lo < hi:
            mid = (lo + hi) // 2
            if j - (rows[mid] & low_j).bit_count() == remaining:
                hi = mid
            else:
                lo = mid + 1
        i = lo  # here table[i-1][j] < remaining: the walk turns left ...
        q = (can_masks[ref[i - 1]] & ((1 << (j - 1)) - 1)).bit_length() - 1
        assert q >= 0, "LCS read-out lost its path"
        j = q + 1  # ... up to the nearest column holding ref[i-1]: a match
    return indices


def _lcs_fmeasure(target: Sequence[str], prediction: Sequence[str]) -> float:
    """rouge_scorer._score_lcs(target, prediction).fmeasure."""
    if not target or not prediction:
        return 0.0
    lcs = lcs_length(target, prediction)
    return scoring.fmeasure(lcs / len(prediction), lcs / len(target))


def _summary_lcs_fmeasure(ref_sents: list[list[str]], can_sents: list[list[str]]) -> float:
    """rouge_scorer._summary_level_lcs(ref_sents, can_sents).fmeasure (union LCS, 1.5.5 style)."""
    if not ref_sents or not can_sents:
        return 0.0
    m = sum(map(len, ref_sents))
    n = sum(map(len, can_sents))
    if not n or not m:
        return 0.0
    counts_r: Counter = Counter()
    counts_c: Counter = Counter()
    for s in ref_sents:
        counts_r.update(s)
    for s in can_sents:
        counts_c.update(s)
    cans = [(c, _match_masks(c), (1 << len(c)) - 1) for c in can_sents]
    hits = 0
    for r in ref_sents:
        union: set[int] = set()
        r_masks = _match_masks(r)
        for c, c_masks, full in cans:
            if not r_masks.keys().isdisjoint(c_masks):  # no shared token: empty LCS
                union.update(lcs_ref_indices(r, c, c_masks, full, r_masks))
        for index in sorted(union):
            token = r[index]
            if counts_c[token] > 0 and counts_r[token] > 0:
                hits += 1
                counts_c[token] -= 1
                counts_r[token] -= 1
    return scoring.fmeasure(hits / n, hits / m)


class FastRougeScorer:
    """Per-sample ROUGE F-measures equal to rouge_score's RougeScorer with use_stemmer=True."""

    def __init__(self) -> None:
        self._tokens = _TokenCache()

    def tokenize(self, text: str) -> list[str]:
        """rouge_score.tokenize.tokenize(text, PorterStemmer()): lowercase, non-[a-z0-9] runs
        -> space, split, stem words longer than 3, keep tokens matching VALID_TOKEN_RE."""
        raw = rs_tokenize.SPACES_RE.split(rs_tokenize.NON_ALPHANUM_RE.sub(" ", text.lower()))
        return [t for t in map(self._tokens.__getitem__, raw) if t]

    def _sentence_tokens(self, text: str) -> list[list[str]]:
        # rougeLsum's sentences: the newline-separated pieces, empty pieces dropped.
        return [self.tokenize(s) for s in text.split("\n") if s]

    def fmeasures(self, target: str, prediction: str) -> tuple[float, float, float, float]:
        """(rouge1, rouge2, rougeL, rougeLsum) F-measures of one (reference, prediction) pair."""
        target_sents = self._sentence_tokens(target)
        prediction_sents = self._sentence_tokens(prediction)
        # "\n" is a token separator, so the whole text's tokens are the pieces' in order.
        target_tokens = [t for s in target_sents for t in s]
        prediction_tokens = [t for s in prediction_sents for t in s]
        return (
            _ngram_fmeasure(target_tokens, prediction_tokens, 1),
            _ngram_fmeasure(target_tokens, prediction_tokens, 2),
            _lcs_fmeasure(target_tokens, prediction_tokens),
            _summary_lcs_fmeasure(target_sents, prediction_sents),
        )


class ReferenceRougeScorer:
    """The stock rouge_score RougeScorer, for cross-checks (`rouge_impl="rouge_score"`)."""

    def __init__(self) -> None:
        self._scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)

    def fmeasures(self, target: str, prediction: str) -> tuple[float, float, float, float]:
        scores = self._scorer.score(target, prediction)
        return tuple(float(scores[t].fmeasure) for t in ROUGE_TYPES)  # type: ignore[return-value]


ROUGE_IMPLS = {"fast": FastRougeScorer, "rouge_score": ReferenceRougeScorer}


def make_scorer(rouge_impl: str = "fast") -> FastRougeScorer | ReferenceRougeScorer:
    try:
        return ROUGE_IMPLS[rouge_impl]()
    except KeyError:
        raise ValueError(
            f"unknown rouge_impl {rouge_impl!r}; choose one of {sorted(ROUGE_IMPLS)}"
        ) from None
