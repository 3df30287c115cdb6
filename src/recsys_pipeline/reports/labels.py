"""The evaluation protocols in words, for every report that shows a metric."""

from __future__ import annotations

#: metric-name prefix -> the protocol in words (sequence datasets, pipelines/train/sequence_nodes)
PROTOCOL_WORDS = {
    "": "every event after a session's first, ranked against all items (full ranking)",
    "full_hist_excluded": "each user's last item, full ranking, the user's history excluded",
    "full_hist_included": "each user's last item, full ranking, the history not excluded",
    "legacy": "each user's last item, LEGACY sampled ranking (negatives per user)",
    "gr": "generative-recommenders' protocol (input window excluded, ranks beyond 2,500 capped)",
}
