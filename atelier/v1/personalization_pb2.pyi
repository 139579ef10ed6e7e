from atelier.v1 import common_pb2 as _common_pb2
from atelier.v1 import recommender_pb2 as _recommender_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InteractionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERACTION_KIND_UNSPECIFIED: _ClassVar[InteractionKind]
    INTERACTION_KIND_VIEW: _ClassVar[InteractionKind]
    INTERACTION_KIND_CLICK: _ClassVar[InteractionKind]
    INTERACTION_KIND_CART: _ClassVar[InteractionKind]
    INTERACTION_KIND_PURCHASE: _ClassVar[InteractionKind]

class EventOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_OUTCOME_UNSPECIFIED: _ClassVar[EventOutcome]
    EVENT_OUTCOME_ACCEPTED: _ClassVar[EventOutcome]
    EVENT_OUTCOME_DUPLICATE: _ClassVar[EventOutcome]
    EVENT_OUTCOME_REJECTED: _ClassVar[EventOutcome]

class PersonalizationJobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERSONALIZATION_JOB_KIND_UNSPECIFIED: _ClassVar[PersonalizationJobKind]
    PERSONALIZATION_JOB_KIND_IMPORT: _ClassVar[PersonalizationJobKind]
    PERSONALIZATION_JOB_KIND_TRAIN: _ClassVar[PersonalizationJobKind]

class Fallback(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_UNSPECIFIED: _ClassVar[Fallback]
    FALLBACK_NONE: _ClassVar[Fallback]
    FALLBACK_POPULARITY: _ClassVar[Fallback]
INTERACTION_KIND_UNSPECIFIED: InteractionKind
INTERACTION_KIND_VIEW: InteractionKind
INTERACTION_KIND_CLICK: InteractionKind
INTERACTION_KIND_CART: InteractionKind
INTERACTION_KIND_PURCHASE: InteractionKind
EVENT_OUTCOME_UNSPECIFIED: EventOutcome
EVENT_OUTCOME_ACCEPTED: EventOutcome
EVENT_OUTCOME_DUPLICATE: EventOutcome
EVENT_OUTCOME_REJECTED: EventOutcome
PERSONALIZATION_JOB_KIND_UNSPECIFIED: PersonalizationJobKind
PERSONALIZATION_JOB_KIND_IMPORT: PersonalizationJobKind
PERSONALIZATION_JOB_KIND_TRAIN: PersonalizationJobKind
FALLBACK_UNSPECIFIED: Fallback
FALLBACK_NONE: Fallback
FALLBACK_POPULARITY: Fallback

class Interaction(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "kind", "timestamp_unix")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    item_id: str
    kind: InteractionKind
    timestamp_unix: float
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., kind: _Optional[_Union[InteractionKind, str]] = ..., timestamp_unix: _Optional[float] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Interaction]
    def __init__(self, events: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ...) -> None: ...

class EventResult(_message.Message):
    __slots__ = ("event_id", "outcome", "reason")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    outcome: EventOutcome
    reason: str
    def __init__(self, event_id: _Optional[str] = ..., outcome: _Optional[_Union[EventOutcome, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("results", "accepted", "duplicates", "rejected", "model_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    accepted: int
    duplicates: int
    rejected: int
    model_version: int
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

class ImportInteractionsRequest(_message.Message):
    __slots__ = ("csv_path",)
    CSV_PATH_FIELD_NUMBER: _ClassVar[int]
    csv_path: str
    def __init__(self, csv_path: _Optional[str] = ...) -> None: ...

class GetPersonalizationJobRequest(_message.Message):
    __slots__ = ("job_id", "max_failures")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    max_failures: int
    def __init__(self, job_id: _Optional[str] = ..., max_failures: _Optional[int] = ...) -> None: ...

class RowFailure(_message.Message):
    __slots__ = ("line", "reason")
    LINE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    line: int
    reason: str
    def __init__(self, line: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PersonalizationJob(_message.Message):
    __slots__ = ("job_id", "kind", "state", "total", "done", "failed", "duplicates", "failures", "created_unix", "finished_unix", "reason", "preference_version", "model_kind", "model_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: PersonalizationJobKind
    state: _common_pb2.JobState
    total: int
    done: int
    failed: int
    duplicates: int
    failures: _containers.RepeatedCompositeFieldContainer[RowFailure]
    created_unix: float
    finished_unix: float
    reason: str
    preference_version: int
    model_kind: str
    model_version: int
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[PersonalizationJobKind, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., duplicates: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[RowFailure, _Mapping]]] = ..., created_unix: _Optional[float] = ..., finished_unix: _Optional[float] = ..., reason: _Optional[str] = ..., preference_version: _Optional[int] = ..., model_kind: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class TrainPreferenceModelRequest(_message.Message):
    __slots__ = ("model_kind", "epochs", "seed", "serve")
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SERVE_FIELD_NUMBER: _ClassVar[int]
    model_kind: str
    epochs: int
    seed: int
    serve: bool
    def __init__(self, model_kind: _Optional[str] = ..., epochs: _Optional[int] = ..., seed: _Optional[int] = ..., serve: _Optional[bool] = ...) -> None: ...

class PreferenceModelInfo(_message.Message):
    __slots__ = ("preference_version", "model_kind", "model_version", "users", "items", "interactions", "trained_unix", "served")
    PREFERENCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_UNIX_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    preference_version: int
    model_kind: str
    model_version: int
    users: int
    items: int
    interactions: int
    trained_unix: float
    served: bool
    def __init__(self, preference_version: _Optional[int] = ..., model_kind: _Optional[str] = ..., model_version: _Optional[int] = ..., users: _Optional[int] = ..., items: _Optional[int] = ..., interactions: _Optional[int] = ..., trained_unix: _Optional[float] = ..., served: _Optional[bool] = ...) -> None: ...

class ListPreferenceModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPreferenceModelsResponse(_message.Message):
    __slots__ = ("models", "served_version")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[PreferenceModelInfo]
    served_version: int
    def __init__(self, models: _Optional[_Iterable[_Union[PreferenceModelInfo, _Mapping]]] = ..., served_version: _Optional[int] = ...) -> None: ...

class ServePreferenceModelRequest(_message.Message):
    __slots__ = ("preference_version",)
    PREFERENCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    preference_version: int
    def __init__(self, preference_version: _Optional[int] = ...) -> None: ...

class ServePreferenceModelResponse(_message.Message):
    __slots__ = ("preference_version", "previous_version")
    PREFERENCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    preference_version: int
    previous_version: int
    def __init__(self, preference_version: _Optional[int] = ..., previous_version: _Optional[int] = ...) -> None: ...

class ListUsersRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class UserInfo(_message.Message):
    __slots__ = ("user_id", "interactions")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    interactions: int
    def __init__(self, user_id: _Optional[str] = ..., interactions: _Optional[int] = ...) -> None: ...

class ListUsersResponse(_message.Message):
    __slots__ = ("users", "preference_version")
    USERS_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[UserInfo]
    preference_version: int
    def __init__(self, users: _Optional[_Iterable[_Union[UserInfo, _Mapping]]] = ..., preference_version: _Optional[int] = ...) -> None: ...

class RankForUserRequest(_message.Message):
    __slots__ = ("user_id", "k", "category", "candidate_item_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    category: str
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., category: _Optional[str] = ..., candidate_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RankForUserResponse(_message.Message):
    __slots__ = ("items", "fallback", "preference_version", "model_version", "unknown_item_ids")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    fallback: Fallback
    preference_version: int
    model_version: int
    unknown_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., fallback: _Optional[_Union[Fallback, str]] = ..., preference_version: _Optional[int] = ..., model_version: _Optional[int] = ..., unknown_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SimilarForUserRequest(_message.Message):
    __slots__ = ("user_id", "item_id", "k", "method", "match_gender", "target_categories")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MATCH_GENDER_FIELD_NUMBER: _ClassVar[int]
    TARGET_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    k: int
    method: _common_pb2.RankingMethod
    match_gender: bool
    target_categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., k: _Optional[int] = ..., method: _Optional[_Union[_common_pb2.RankingMethod, str]] = ..., match_gender: _Optional[bool] = ..., target_categories: _Optional[_Iterable[str]] = ...) -> None: ...

class SimilarForUserResponse(_message.Message):
    __slots__ = ("similar", "pairings", "fallback", "preference_version", "model_version")
    SIMILAR_FIELD_NUMBER: _ClassVar[int]
    PAIRINGS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    similar: _recommender_pb2.PartitionList
    pairings: _containers.RepeatedCompositeFieldContainer[_recommender_pb2.PartitionList]
    fallback: Fallback
    preference_version: int
    model_version: int
    def __init__(self, similar: _Optional[_Union[_recommender_pb2.PartitionList, _Mapping]] = ..., pairings: _Optional[_Iterable[_Union[_recommender_pb2.PartitionList, _Mapping]]] = ..., fallback: _Optional[_Union[Fallback, str]] = ..., preference_version: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

class DesignForUserRequest(_message.Message):
    __slots__ = ("user_id", "category", "item_id", "steps", "nearest")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    NEAREST_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    category: str
    item_id: str
    steps: int
    nearest: int
    def __init__(self, user_id: _Optional[str] = ..., category: _Optional[str] = ..., item_id: _Optional[str] = ..., steps: _Optional[int] = ..., nearest: _Optional[int] = ...) -> None: ...

class DesignForUserResponse(_message.Message):
    __slots__ = ("png", "code", "score", "start_score", "best_item_score", "best_item", "nearest", "max_abs_sigma", "steps", "category", "preference_version", "model_version")
    PNG_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    START_SCORE_FIELD_NUMBER: _ClassVar[int]
    BEST_ITEM_SCORE_FIELD_NUMBER: _ClassVar[int]
    BEST_ITEM_FIELD_NUMBER: _ClassVar[int]
    NEAREST_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_SIGMA_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    code: _common_pb2.LatentVector
    score: float
    start_score: float
    best_item_score: float
    best_item: _common_pb2.ScoredItem
    nearest: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    max_abs_sigma: float
    steps: int
    category: str
    preference_version: int
    model_version: int
    def __init__(self, png: _Optional[bytes] = ..., code: _Optional[_Union[_common_pb2.LatentVector, _Mapping]] = ..., score: _Optional[float] = ..., start_score: _Optional[float] = ..., best_item_score: _Optional[float] = ..., best_item: _Optional[_Union[_common_pb2.ScoredItem, _Mapping]] = ..., nearest: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., max_abs_sigma: _Optional[float] = ..., steps: _Optional[int] = ..., category: _Optional[str] = ..., preference_version: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...
