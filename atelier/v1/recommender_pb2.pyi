from atelier.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Partition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTITION_UNSPECIFIED: _ClassVar[Partition]
    PARTITION_KMEANS: _ClassVar[Partition]
    PARTITION_CATEGORY: _ClassVar[Partition]
    PARTITION_SUB_CATEGORY: _ClassVar[Partition]
    PARTITION_MASTER_CATEGORY: _ClassVar[Partition]
PARTITION_UNSPECIFIED: Partition
PARTITION_KMEANS: Partition
PARTITION_CATEGORY: Partition
PARTITION_SUB_CATEGORY: Partition
PARTITION_MASTER_CATEGORY: Partition

class RecommendRequest(_message.Message):
    __slots__ = ("query", "method", "partition", "k", "target_categories", "match_gender", "gender", "allow_partial", "exact")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    TARGET_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MATCH_GENDER_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.Query
    method: _common_pb2.RankingMethod
    partition: Partition
    k: int
    target_categories: _containers.RepeatedScalarFieldContainer[str]
    match_gender: bool
    gender: str
    allow_partial: bool
    exact: bool
    def __init__(self, query: _Optional[_Union[_common_pb2.Query, _Mapping]] = ..., method: _Optional[_Union[_common_pb2.RankingMethod, str]] = ..., partition: _Optional[_Union[Partition, str]] = ..., k: _Optional[int] = ..., target_categories: _Optional[_Iterable[str]] = ..., match_gender: _Optional[bool] = ..., gender: _Optional[str] = ..., allow_partial: _Optional[bool] = ..., exact: _Optional[bool] = ...) -> None: ...

class PartitionList(_message.Message):
    __slots__ = ("partition", "items", "rank")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    partition: str
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    rank: int
    def __init__(self, partition: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., rank: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("query_partition", "similar", "pairings", "model_version", "query_category", "matched_gender", "shard_count", "shards", "partial", "missing_shards")
    QUERY_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_FIELD_NUMBER: _ClassVar[int]
    PAIRINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MATCHED_GENDER_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    query_partition: str
    similar: PartitionList
    pairings: _containers.RepeatedCompositeFieldContainer[PartitionList]
    model_version: int
    query_category: _common_pb2.CategoryPrediction
    matched_gender: str
    shard_count: int
    shards: _containers.RepeatedScalarFieldContainer[int]
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, query_partition: _Optional[str] = ..., similar: _Optional[_Union[PartitionList, _Mapping]] = ..., pairings: _Optional[_Iterable[_Union[PartitionList, _Mapping]]] = ..., model_version: _Optional[int] = ..., query_category: _Optional[_Union[_common_pb2.CategoryPrediction, _Mapping]] = ..., matched_gender: _Optional[str] = ..., shard_count: _Optional[int] = ..., shards: _Optional[_Iterable[int]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...
