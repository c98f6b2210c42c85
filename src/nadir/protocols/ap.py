"""Average precision from a ranked list of true and false positives, the two PASCAL VOC ways."""

from __future__ import annotations

import numpy as np

# VOC07's eleven recall thresholds, built as the DOTA devkit builds them: np.arange's values are
# not exactly k/10 (the fourth is 0.30000000000000004), so a recall of exactly 0.3 does not reach
# it. Writing [0, 0.1, ..., 1.0] by hand would change AP where recall lands on a tenth.
VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


def precision_recall(true_positive: np.ndarray, false_positive: np.ndarray,
                     positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative precision and recall down a ranked list (1 = counted, 0 = not).

    A detection counted as neither (DOTA: matched to a difficult object) has 0 in both arrays;
    precision divides by at least the machine epsilon, so a list starting with such detections
    has precision 0 there instead of 0/0.
    """
    tp = np.cumsum(true_positive, dtype=np.float64)
    fp = np.cumsum(false_positive, dtype=np.float64)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return precision, recall


def voc07_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC07 11-point AP: the mean, over recall thresholds 0, 0.1, ..., 1, of the best
    precision at a recall at least that high (0 where that recall is never reached)."""
    total = 0.0
    for threshold in VOC07_RECALL_THRESHOLDS:
        reached = recall >= threshold
        total += float(np.max(precision[reached])) if reached.any() else 0.0
    return total / len(VOC07_RECALL_THRESHOLDS)


def all_point_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC2010+ AP: the area under the precision envelope (precision made non-increasing in
    recall), summed where recall changes."""
    rec = np.concatenate(([0.0], recall, [1.0]))
    prec = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(np.sum((rec[steps] - rec[steps - 1]) * envelope[steps]))
