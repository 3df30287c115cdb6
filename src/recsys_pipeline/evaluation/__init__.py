"""Full-ranking next-item evaluation shared by every model (no Kedro imports).

``evaluate(model, test, ...)`` runs the protocol of ``shared/spec/evaluation.md`` (next to the checkout);
``rank_of_targets`` / ``rank_from_counts`` / ``count_higher_equal`` give the ranks under every tie
mode of ``TIE_MODES``; ``metrics_from_ranks`` turns ranks into Recall@k, MRR@k and NDCG@k.
"""

from recsys_pipeline.evaluation.evaluate import (
    EvalStreams,
    EvaluationResult,
    NoTargetsError,
    evaluate,
    prepare_streams,
)
from recsys_pipeline.evaluation.last_item import LastItemResult, evaluate_last_item
from recsys_pipeline.evaluation.metrics import (
    TIE_MODES,
    MetricAccumulator,
    count_higher_equal,
    metric_names,
    metrics_from_ranks,
    rank_from_counts,
    rank_of_targets,
)
from recsys_pipeline.evaluation.user_ranking import (
    UserModel,
    UserRankingResult,
    full_ranking,
    sampled_ranking,
)

__all__ = [
    "TIE_MODES",
    "EvalStreams",
    "UserModel",
    "UserRankingResult",
    "full_ranking",
    "sampled_ranking",
    "EvaluationResult",
    "NoTargetsError",
    "MetricAccumulator",
    "count_higher_equal",
    "evaluate",
    "metric_names",
    "metrics_from_ranks",
    "prepare_streams",
    "rank_from_counts",
    "rank_of_targets",
    "LastItemResult",
    "evaluate_last_item",
]
