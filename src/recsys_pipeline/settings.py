"""Project settings (Kedro defaults plus the OmegaConfigLoader environments)."""

import os

from kedro.config import OmegaConfigLoader

# Great Expectations: no analytics, even though 1.x ships no client.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
