"""Operating trained models: exactly-once ingestion of incoming files (:mod:`.ingest`),
champion/challenger on the MLflow registry (:mod:`.champion`), day-by-day replay
(:mod:`.replay`) and schedule generators for systemd, cron and Airflow (:mod:`.schedule`).
No Kedro imports: the ``retrain`` and ``replay`` pipelines call these functions."""
