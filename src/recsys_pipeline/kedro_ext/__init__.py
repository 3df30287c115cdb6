"""Kedro extensions of the project: custom catalog datasets (:mod:`.datasets`) and the session
store that keeps session ids unique (:mod:`.session_store`). The only library package besides
``pipelines/`` that imports Kedro."""
