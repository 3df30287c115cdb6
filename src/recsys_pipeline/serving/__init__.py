"""Inference for every registered model: top-k ``recommend`` with raw ids (:mod:`.recommend`)
and the MLflow pyfunc model that serves it (:mod:`.pyfunc`, models-from-code, no pickle)."""
