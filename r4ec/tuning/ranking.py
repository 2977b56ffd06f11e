"""How well a score ranks what it should: the AUC the construction card and the evaluation report."""

from __future__ import annotations


def auc(scores: list[float], positives: list[bool]) -> float | None:
    """The chance a positive scores above a negative, ties counting half (for a yes / no score, (TPR + TNR) / 2);
    None when a class is missing. From average ranks: n log n, for the bootstrap's thousand draws."""
    n_pos = sum(map(bool, positives))
    n_neg = len(positives) - n_pos
    if not n_pos or not n_neg:
        return None
    ordered, rank_sum, start = sorted(zip(scores, positives)), 0.0, 0
    while start < len(ordered):
        end = start
        while end < len(ordered) and ordered[end][0] == ordered[start][0]:
            end += 1
        rank_sum += (start + 1 + end) / 2 * sum(bool(p) for _, p in ordered[start:end])  # ranks start+1 .. end
        start = end
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def threshold_at_rate(scores: list[float], rate: float) -> float | None:
    """The score at or above which a share `rate` of the scores lie (the teacher predicting "like" as often as the
    samples are liked); None without scores."""
    if not scores:
        return None
    ordered = sorted(scores, reverse=True)
    return ordered[min(len(ordered) - 1, max(0, round(rate * len(ordered)) - 1))]
