"""The one table from RPC to what its caller needs. Deny by default.

A method that is neither here nor public is refused before any handler
runs; a unit test fails when a method of the pacs.v1 services is missing.
Project-scoped requirements are checked inside the use case, against the
project of the resource, in the same query that reads it.
"""

from __future__ import annotations

from pacs_grpc.domain.access import Access

_IDENTITY = "/pacs.v1.IdentityService/"
_ANNOTATION = "/pacs.v1.AnnotationService/"
_MASK = "/pacs.v1.MaskService/"

ACCESS_BY_METHOD: dict[str, Access] = {
    _IDENTITY + "Login": Access.AUTHENTICATED,
    _IDENTITY + "GetCurrentUser": Access.AUTHENTICATED,
    # Self or platform administrator, checked in the use case.
    _IDENTITY + "UpdateUser": Access.AUTHENTICATED,
    _IDENTITY + "CreateProject": Access.PLATFORM_ADMIN,
    _IDENTITY + "GetProject": Access.PROJECT_VIEWER,
    # Lists only the caller's projects (all of them for administrators).
    _IDENTITY + "ListProjects": Access.AUTHENTICATED,
    _IDENTITY + "DeactivateProject": Access.PLATFORM_ADMIN,
    _IDENTITY + "AddProjectMember": Access.PROJECT_OWNER,
    _IDENTITY + "ListProjectMembers": Access.PROJECT_VIEWER,
    _IDENTITY + "RemoveProjectMember": Access.PROJECT_OWNER,
    _ANNOTATION + "CreateAnnotation": Access.PROJECT_ANNOTATOR,
    _ANNOTATION + "GetAnnotation": Access.PROJECT_VIEWER,
    _ANNOTATION + "ListAnnotations": Access.PROJECT_VIEWER,
    _ANNOTATION + "UpdateAnnotation": Access.PROJECT_ANNOTATOR,
    _ANNOTATION + "DeleteAnnotation": Access.PROJECT_ANNOTATOR,
    _ANNOTATION + "WatchAnnotations": Access.PROJECT_VIEWER,
    _MASK + "CreateMaskGroup": Access.PROJECT_ANNOTATOR,
    _MASK + "ListMaskGroups": Access.PROJECT_VIEWER,
    _MASK + "GetMaskGroup": Access.PROJECT_VIEWER,
    _MASK + "DeleteMaskGroup": Access.PROJECT_ANNOTATOR,
    _MASK + "CreateUploadUrls": Access.PROJECT_ANNOTATOR,
    _MASK + "CompleteUpload": Access.PROJECT_ANNOTATOR,
    _MASK + "ListMasks": Access.PROJECT_VIEWER,
    _MASK + "GetMask": Access.PROJECT_VIEWER,
    _MASK + "CreateDownloadUrls": Access.PROJECT_VIEWER,
    _MASK + "PushMasks": Access.PROJECT_ANNOTATOR,
    _MASK + "ExportMaskGroup": Access.PROJECT_ANNOTATOR,
    _MASK + "ListMaskGroupExports": Access.PROJECT_VIEWER,
    _MASK + "ImportSegmentation": Access.PROJECT_ANNOTATOR,
    _MASK + "CreateSegmentationUpload": Access.PROJECT_ANNOTATOR,
}

# Probes and service discovery carry no data and must work without a token.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)
