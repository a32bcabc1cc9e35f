"""Bearer-token authentication against the identity provider's (Keycloak's) published keys."""

from pacs_grpc.adapters.auth.jwks import JwksCache, JwksUnavailableError
from pacs_grpc.adapters.auth.verifier import TokenVerifier, bearer_token

__all__ = ["JwksCache", "JwksUnavailableError", "TokenVerifier", "bearer_token"]
