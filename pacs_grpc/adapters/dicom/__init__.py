"""DICOM objects the server writes and reads (highdicom, pydicom); no I/O here.

Implements the SegmentationReader and SegmentationWriter ports. May import: pacs_grpc.domain,
pacs_grpc.adapters.images; never pacs_grpc.api.
"""
