"""expertgate's gateway: an OpenAI-compatible routing proxy (depends on routers, never the
other way)."""

from gateway.app import Gateway, create_app
from gateway.config import ConfigError, GatewayConfig, Settings, load_config

__all__ = ["ConfigError", "Gateway", "GatewayConfig", "Settings", "create_app", "load_config"]
