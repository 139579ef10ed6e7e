from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]

class RankingMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANKING_METHOD_UNSPECIFIED: _ClassVar[RankingMethod]
    RANKING_METHOD_LOGLIK: _ClassVar[RankingMethod]
    RANKING_METHOD_FIXED_EPS: _ClassVar[RankingMethod]
    RANKING_METHOD_MU_L2: _ClassVar[RankingMethod]
    RANKING_METHOD_COSINE: _ClassVar[RankingMethod]
    RANKING_METHOD_CITYBLOCK: _ClassVar[RankingMethod]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_FAILED: JobState
RANKING_METHOD_UNSPECIFIED: RankingMethod
RANKING_METHOD_LOGLIK: RankingMethod
RANKING_METHOD_FIXED_EPS: RankingMethod
RANKING_METHOD_MU_L2: RankingMethod
RANKING_METHOD_COSINE: RankingMethod
RANKING_METHOD_CITYBLOCK: RankingMethod

class LatentCode(_message.Message):
    __slots__ = ("mu", "sigma", "z")
    MU_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    mu: _containers.RepeatedScalarFieldContainer[float]
    sigma: _containers.RepeatedScalarFieldContainer[float]
    z: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, mu: _Optional[_Iterable[float]] = ..., sigma: _Optional[_Iterable[float]] = ..., z: _Optional[_Iterable[float]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "category", "article_type", "colour", "name", "image_ref", "master_category", "sub_category", "gender", "usage", "season")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ARTICLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    COLOUR_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    MASTER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SUB_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SEASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    category: str
    article_type: str
    colour: str
    name: str
    image_ref: str
    master_category: str
    sub_category: str
    gender: str
    usage: str
    season: str
    def __init__(self, item_id: _Optional[str] = ..., category: _Optional[str] = ..., article_type: _Optional[str] = ..., colour: _Optional[str] = ..., name: _Optional[str] = ..., image_ref: _Optional[str] = ..., master_category: _Optional[str] = ..., sub_category: _Optional[str] = ..., gender: _Optional[str] = ..., usage: _Optional[str] = ..., season: _Optional[str] = ...) -> None: ...

class CategoryPrediction(_message.Message):
    __slots__ = ("sub_category", "master_category", "confidence", "from_label")
    SUB_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MASTER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FROM_LABEL_FIELD_NUMBER: _ClassVar[int]
    sub_category: str
    master_category: str
    confidence: float
    from_label: bool
    def __init__(self, sub_category: _Optional[str] = ..., master_category: _Optional[str] = ..., confidence: _Optional[float] = ..., from_label: _Optional[bool] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "latent_dim", "image_height", "image_width", "data_hash", "epsilon")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DATA_HASH_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    version: int
    latent_dim: int
    image_height: int
    image_width: int
    data_hash: str
    epsilon: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, version: _Optional[int] = ..., latent_dim: _Optional[int] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., data_hash: _Optional[str] = ..., epsilon: _Optional[_Iterable[float]] = ...) -> None: ...

class ItemFailure(_message.Message):
    __slots__ = ("item_id", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "model_version", "state", "total", "done", "failed", "items_per_second", "eta_seconds", "failures", "created_unix", "finished_unix", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_version: int
    state: JobState
    total: int
    done: int
    failed: int
    items_per_second: float
    eta_seconds: float
    failures: _containers.RepeatedCompositeFieldContainer[ItemFailure]
    created_unix: float
    finished_unix: float
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., model_version: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., items_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., failures: _Optional[_Iterable[_Union[ItemFailure, _Mapping]]] = ..., created_unix: _Optional[float] = ..., finished_unix: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("vector", "item_id", "image")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    vector: LatentVector
    item_id: str
    image: bytes
    def __init__(self, vector: _Optional[_Union[LatentVector, _Mapping]] = ..., item_id: _Optional[str] = ..., image: _Optional[bytes] = ...) -> None: ...

class LatentVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item", "score", "cluster", "partition")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    item: Item
    score: float
    cluster: int
    partition: str
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ..., score: _Optional[float] = ..., cluster: _Optional[int] = ..., partition: _Optional[str] = ...) -> None: ...
