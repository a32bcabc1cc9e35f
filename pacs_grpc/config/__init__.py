"""Configuration, read from environment variables only.

Every variable is declared once, on its settings field (settings.py, groups.py), and the
README's configuration table is generated from those declarations.

May import: pacs_grpc.domain (the value types it parses into) and the standard library.
Adapters, the edge and the composition root import it; the domain, the use cases and the
gRPC edge never do (import-linter checks it).
"""

from pacs_grpc.config.groups import (
    DEV_ISSUER,
    MIB,
    DatabaseSettings,
    OidcSettings,
    PacsSettings,
    RateLimitSettings,
    StorageSettings,
)
from pacs_grpc.config.kinds import is_loopback_host
from pacs_grpc.config.settings import (
    Settings,
    documented_settings,
    migration_database_url_from_env,
)
from pacs_grpc.config.variables import ConfigError, Setting

__all__ = [
    "DEV_ISSUER",
    "MIB",
    "ConfigError",
    "DatabaseSettings",
    "OidcSettings",
    "PacsSettings",
    "RateLimitSettings",
    "Setting",
    "Settings",
    "StorageSettings",
    "documented_settings",
    "is_loopback_host",
    "migration_database_url_from_env",
]
