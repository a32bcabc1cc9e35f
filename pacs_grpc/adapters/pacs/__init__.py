"""The hospital's PACS over DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and its OAuth client credentials.

Implements the Pacs port. May import: pacs_grpc.domain, pacs_grpc.config (PacsSettings),
dicomweb-client and the Python client's token provider; never pacs_grpc.api.
"""
