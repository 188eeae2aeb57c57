"""Helpers for users' own test suites (pytest or unittest)."""
from __future__ import annotations

from .compare import metrics, table


def assert_explanations_close(actual, expected, rtol=1e-4, atol=1e-6, min_correlation=None, min_topk_overlap=None):
    """Fail with the comparison table unless two explanations (Explanation objects or arrays) agree:
    max |a - b| <= atol + rtol * max|b|, and optionally a minimum correlation and top-1% pixel overlap."""
    a = getattr(actual, "relevance", actual)
    b = getattr(expected, "relevance", expected)
    r = metrics("explanation", a, b, rtol, atol)
    ok = r.ok and (min_correlation is None or r.correlation >= min_correlation) and \
        (min_topk_overlap is None or r.topk_overlap >= min_topk_overlap)
    if not ok:
        raise AssertionError("explanations differ:\n" + table([r]))
