"""The studio API's request and answer shapes, for its OpenAPI document (/openapi.json, /docs).

They describe; they do not validate on the way in or out: requests are read by the strict
field readers of services/gateway/api.py (whose 400 messages callers rely on), and answers are
built by `Gateway`. tests/integration/test_gateway.py checks live answers against these
models, so the document cannot drift from what the gateway sends.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from services.common.client import METHODS
from services.gateway.api import MAX_CODE_VALUES, MAX_STRING_CHARS

Code = list[float]
# The ranking methods a caller may name, as the schema's enum.
METHOD_NAMES: list[JsonValue] = [name for name in sorted(METHODS)]
ShortText = Field("", max_length=MAX_STRING_CHARS)


class Shape(BaseModel):
    # Requests with other fields are refused (400); answers have exactly these.
    model_config = ConfigDict(extra="forbid")


# --- requests


class DecodeRequest(Shape):
    code: Code = Field(
        min_length=1,
        max_length=MAX_CODE_VALUES,
        description="A latent code of the served model's size (finite float32 values).",
    )


class RecommendRequest(Shape):
    code: Code = Field(min_length=1, max_length=MAX_CODE_VALUES, description="The query code.")
    method: str = Field(
        "fixed_eps", json_schema_extra={"enum": METHOD_NAMES}, description="Ranking method."
    )
    k: int = Field(8, ge=1, le=1000, description="Similar items per list.")
    gender: str = Field("", max_length=MAX_STRING_CHARS, description="Gender to match.")
    match_gender: bool = Field(True, description="Keep pairings to the query's gender.")


class ServeGenerationRequest(Shape):
    model_version: int = Field(ge=0, description="The generation to answer queries from.")


class ForYouRequest(Shape):
    user_id: str = Field(min_length=1, max_length=MAX_STRING_CHARS)
    k: int = Field(8, ge=1, le=1000)
    category: str = ShortText


class DesignForMeRequest(Shape):
    """A user and a category or an item to start the design from (one of the two)."""

    user_id: str = Field(min_length=1, max_length=MAX_STRING_CHARS)
    category: str = ShortText
    item_id: str = ShortText


def json_body(model: type[Shape]) -> dict[str, Any]:
    """`openapi_extra` naming `model` as a route's JSON body (read by hand, not by FastAPI)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


# --- answers


class Error(Shape):
    error: str = Field(description="What went wrong, for the caller.")
    request_id: str = Field(description="The id the gateway's log has the details under.")
    code: str | None = Field(None, description="The gRPC-style reason of an auth refusal.")


class CategoryCount(Shape):
    sub_category: str
    master_category: str
    items: int


class Categories(Shape):
    categories: list[CategoryCount]
    model_version: int


class CategoryGuess(Shape):
    sub_category: str
    master_category: str
    confidence: float
    from_label: bool


class StartItem(Shape):
    item_id: str
    sub_category: str
    gender: str
    name: str
    image_url: str


class Sliders(Shape):
    origin: Code
    directions: list[Code]
    lower: Code
    upper: Code
    labels: list[str]


class Start(Shape):
    item: StartItem
    category: CategoryGuess
    code: Code
    sliders: Sliders
    model_version: int


class ScoredItem(Shape):
    item_id: str
    sub_category: str
    article_type: str
    gender: str
    name: str
    score: float
    partition: str
    image_url: str


class Pairing(Shape):
    category: str
    items: list[ScoredItem]


class Recommendation(Shape):
    category: str
    query_category: CategoryGuess
    matched_gender: str
    similar: list[ScoredItem]
    pairings: list[Pairing]
    model_version: int


class Encoded(Shape):
    code: Code
    model_version: int


class Generation(Shape):
    model_version: int
    items: int
    served: bool


class Generations(Shape):
    generations: list[Generation]
    served_version: int


class ServedGeneration(Shape):
    model_version: int
    previous_version: int


class UserSummary(Shape):
    user_id: str
    interactions: int


class Users(Shape):
    users: list[UserSummary]
    preference_version: int


class ForYou(Shape):
    items: list[ScoredItem]
    fallback: Literal["popularity", "none"]
    preference_version: int
    model_version: int


class Design(Shape):
    png_base64: str
    code: Code
    score: float
    start_score: float
    best_item_score: float
    best_item: ScoredItem
    nearest: list[ScoredItem]
    max_abs_sigma: float
    category: str
    preference_version: int
    model_version: int


class Health(Shape):
    serving: bool
    services: dict[str, bool]


class Ready(Shape):
    ready: bool
    draining: bool = Field(description="True once the gateway is shutting down.")
    services: dict[str, bool]


class Live(Shape):
    live: bool
