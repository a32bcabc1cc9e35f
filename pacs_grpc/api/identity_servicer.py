"""IdentityService: proto in, use case, proto out."""

from __future__ import annotations

from typing import Any

import grpc
from pacs.v1 import identity_pb2, identity_pb2_grpc

from pacs_grpc.api import convert
from pacs_grpc.api.gate import current_call
from pacs_grpc.services.identity import PROFILE_FIELDS, IdentityUseCases

# The servicer methods read nothing from it: the gate put the call's context in a contextvar.
Context = grpc.aio.ServicerContext[Any, Any]


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    """IdentityService: proto in, use case, proto out; no validation or access checks here
    (IdentityUseCases does both).
    """

    def __init__(self, use_cases: IdentityUseCases[Any]) -> None:
        self._use_cases = use_cases

    async def Login(
        self, request: identity_pb2.LoginRequest, context: Context
    ) -> identity_pb2.LoginResponse:
        call = current_call()
        user, memberships = await self._use_cases.login(call)
        return identity_pb2.LoginResponse(
            user=convert.user(user),
            memberships=[convert.member(m) for m in memberships],
            platform_admin=call.caller.platform_admin,
        )

    async def GetCurrentUser(
        self, request: identity_pb2.GetCurrentUserRequest, context: Context
    ) -> identity_pb2.GetCurrentUserResponse:
        user = await self._use_cases.current_user(current_call())
        return identity_pb2.GetCurrentUserResponse(user=convert.user(user))

    async def UpdateUser(
        self, request: identity_pb2.UpdateUserRequest, context: Context
    ) -> identity_pb2.UpdateUserResponse:
        values = {name: getattr(request.user, name) for name in PROFILE_FIELDS}
        user = await self._use_cases.update_user(
            current_call(), request.user_id, list(request.update_mask.paths), values
        )
        return identity_pb2.UpdateUserResponse(user=convert.user(user))

    async def CreateProject(
        self, request: identity_pb2.CreateProjectRequest, context: Context
    ) -> identity_pb2.CreateProjectResponse:
        project = await self._use_cases.create_project(
            current_call(), request.project.name, request.project.description, request.request_id
        )
        return identity_pb2.CreateProjectResponse(project=convert.project(project))

    async def GetProject(
        self, request: identity_pb2.GetProjectRequest, context: Context
    ) -> identity_pb2.GetProjectResponse:
        project = await self._use_cases.get_project(current_call(), request.project_id)
        return identity_pb2.GetProjectResponse(project=convert.project(project))

    async def ListProjects(
        self, request: identity_pb2.ListProjectsRequest, context: Context
    ) -> identity_pb2.ListProjectsResponse:
        page = await self._use_cases.list_projects(
            current_call(), request.page_size, request.page_token, request.include_inactive
        )
        return identity_pb2.ListProjectsResponse(
            projects=[convert.project(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeactivateProject(
        self, request: identity_pb2.DeactivateProjectRequest, context: Context
    ) -> identity_pb2.DeactivateProjectResponse:
        project = await self._use_cases.deactivate_project(current_call(), request.project_id)
        return identity_pb2.DeactivateProjectResponse(project=convert.project(project))

    async def UpdateProject(
        self, request: identity_pb2.UpdateProjectRequest, context: Context
    ) -> identity_pb2.UpdateProjectResponse:
        project = await self._use_cases.update_project(
            current_call(),
            request.project_id,
            list(request.update_mask.paths),
            description=request.project.description,
            export_unapproved=request.project.export_unapproved,
        )
        return identity_pb2.UpdateProjectResponse(project=convert.project(project))

    async def AddProjectMember(
        self, request: identity_pb2.AddProjectMemberRequest, context: Context
    ) -> identity_pb2.AddProjectMemberResponse:
        member = await self._use_cases.add_member(
            current_call(), request.project_id, request.user_id, request.role
        )
        return identity_pb2.AddProjectMemberResponse(member=convert.member(member))

    async def ListProjectMembers(
        self, request: identity_pb2.ListProjectMembersRequest, context: Context
    ) -> identity_pb2.ListProjectMembersResponse:
        page = await self._use_cases.list_members(
            current_call(), request.project_id, request.page_size, request.page_token
        )
        return identity_pb2.ListProjectMembersResponse(
            members=[convert.member(m) for m in page.items],
            next_page_token=page.next_page_token,
        )

    async def RemoveProjectMember(
        self, request: identity_pb2.RemoveProjectMemberRequest, context: Context
    ) -> identity_pb2.RemoveProjectMemberResponse:
        await self._use_cases.remove_member(current_call(), request.project_id, request.user_id)
        return identity_pb2.RemoveProjectMemberResponse()
