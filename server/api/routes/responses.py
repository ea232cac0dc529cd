"""OpenAI's Responses API: create a response (served as a chat completion), read, list the input items of, and delete
a stored one (each counted against the key's RPM and audited). Each route hands its validated body to the serving
layer and shapes nothing itself."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from server.api.deps import PlaneDep, ServingDep
from server.api.gates import KeyFirstRoute
from server.api.streaming import event_stream_schema, respond, whole
from server.protocol.base import ErrorResponse
from server.protocol.responses import InputItemsQuery, ResponseRequest
from server.protocol.responses_replies import DeletedResponse, InputItemList, ResponseObject, ResponseStreamEvent
from server.serving.endpoints import responses, responses_stored

router = APIRouter(prefix="/v1", route_class=KeyFirstRoute)

# Stream events appear in no route's JSON body; the event-stream schema refers to them.
STREAM_EVENTS = (ResponseStreamEvent,)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_errors(400, 401, 403, 404, 429, 500, 503),
    200: {
        "content": {"text/event-stream": {"schema": event_stream_schema(ResponseStreamEvent)}},
        "description": "The response, or with `stream: true` server-sent events named by their `type`.",
    },
}
STORED_RESPONSES = _errors(401, 404, 429, 500, 503)


@router.post("/responses", response_model=ResponseObject, responses=CREATE_RESPONSES)
async def create_response(
    body: ResponseRequest, serving: ServingDep, plane: PlaneDep, response: Response
) -> ResponseObject | Response:
    return respond(await responses.create(body, serving, plane.responses), response)


@router.get("/responses/{response_id}", responses=STORED_RESPONSES)
async def get_response(response_id: str, serving: ServingDep, plane: PlaneDep, response: Response) -> ResponseObject:
    """A stored response; 404 for another key's, an expired one, or one created with `store: false`."""
    return whole(await responses_stored.retrieve(response_id, serving, plane.responses), response)


@router.delete("/responses/{response_id}", responses=STORED_RESPONSES)
async def delete_response(
    response_id: str, serving: ServingDep, plane: PlaneDep, response: Response
) -> DeletedResponse:
    return whole(await responses_stored.delete(response_id, serving, plane.responses), response)


@router.get("/responses/{response_id}/input_items", responses=STORED_RESPONSES)
async def list_input_items(
    response_id: str,
    query: Annotated[InputItemsQuery, Query()],
    serving: ServingDep,
    plane: PlaneDep,
    response: Response,
) -> InputItemList:
    """The input items of a stored response (those of its request, not those `previous_response_id` chained in)."""
    return whole(await responses_stored.input_items(response_id, query, serving, plane.responses), response)
