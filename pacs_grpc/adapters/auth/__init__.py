"""Bearer-token authentication against the identity provider's (Keycloak's) published keys.

Implements the Verifier and TokenReader ports. May import: pacs_grpc.domain, pacs_grpc.config
(OidcSettings), pyjwt and cryptography; never pacs_grpc.api.
"""

from pacs_grpc.adapters.auth.jwks import JwksCache, JwksUnavailableError
from pacs_grpc.adapters.auth.verifier import TokenVerifier, bearer_token

__all__ = ["JwksCache", "JwksUnavailableError", "TokenVerifier", "bearer_token"]
