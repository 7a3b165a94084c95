"""HTTP schemas of the recommendation routes (request and response bodies; docs/CONTRACTS.md).

Strict (no "10" -> 10 coercion, no unknown fields), so a wrong type is a 422 naming the field. The routes
declare the response models for OpenAPI (and schemathesis checks answers against them) but build the JSON
directly (`service.routes`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9_.:@-]+$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: Identifier
    history: list[Identifier] | None = Field(
        None, description="item ids, newest last; absent: read from the store (scoter:hist:{version}:{user_id})")
    k: int = Field(10, ge=1, le=100, description="items to return (at most the model's beam size)")
    exclude_seen: bool = Field(True, description="drop items already in the history")


class BatchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    requests: list[RecommendationRequest] = Field(min_length=1)


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendationResponse(BaseModel):
    user_id: str
    items: list[ScoredItem]
    variant: str
    experiment: str
    in_experiment: bool
    forced: bool
    model_id: str
    model_version: str
    reasoning: Literal["hit", "miss", "stale", "error"] = Field(
        description="hit: served with the user's reasoning; miss/stale/error (store down or bad value): without")
    history_source: Literal["request", "store", "none"]
    history_length: int
    config_version: str
    request_id: str = Field(description="the request's id (the caller's X-Request-ID if it sent one; in a batch "
                            "`<id>.<index>`): exposure events carry it, so outcomes can be joined to it")
    assignments: list[dict[str, str]] = Field(
        default_factory=list, description="every experiment the user is in: [{experiment, variant}]")


class BatchResponse(BaseModel):
    results: list[RecommendationResponse]
