from atelier.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_SCOPE_UNSPECIFIED: _ClassVar[SearchScope]
    SEARCH_SCOPE_CLUSTER: _ClassVar[SearchScope]
    SEARCH_SCOPE_CATALOGUE: _ClassVar[SearchScope]
    SEARCH_SCOPE_SUB_CATEGORY: _ClassVar[SearchScope]
    SEARCH_SCOPE_MASTER_CATEGORY: _ClassVar[SearchScope]
SEARCH_SCOPE_UNSPECIFIED: SearchScope
SEARCH_SCOPE_CLUSTER: SearchScope
SEARCH_SCOPE_CATALOGUE: SearchScope
SEARCH_SCOPE_SUB_CATEGORY: SearchScope
SEARCH_SCOPE_MASTER_CATEGORY: SearchScope

class SearchRequest(_message.Message):
    __slots__ = ("query", "method", "scope", "k", "category", "nprobe", "exclude_query_item", "allow_partial", "exact")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_QUERY_ITEM_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.Query
    method: _common_pb2.RankingMethod
    scope: SearchScope
    k: int
    category: str
    nprobe: int
    exclude_query_item: bool
    allow_partial: bool
    exact: bool
    def __init__(self, query: _Optional[_Union[_common_pb2.Query, _Mapping]] = ..., method: _Optional[_Union[_common_pb2.RankingMethod, str]] = ..., scope: _Optional[_Union[SearchScope, str]] = ..., k: _Optional[int] = ..., category: _Optional[str] = ..., nprobe: _Optional[int] = ..., exclude_query_item: _Optional[bool] = ..., allow_partial: _Optional[bool] = ..., exact: _Optional[bool] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "query_cluster", "model_version", "query_category", "searched", "shard_count", "shards", "partial", "missing_shards")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    QUERY_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SEARCHED_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    query_cluster: int
    model_version: int
    query_category: _common_pb2.CategoryPrediction
    searched: _containers.RepeatedScalarFieldContainer[str]
    shard_count: int
    shards: _containers.RepeatedScalarFieldContainer[int]
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., query_cluster: _Optional[int] = ..., model_version: _Optional[int] = ..., query_category: _Optional[_Union[_common_pb2.CategoryPrediction, _Mapping]] = ..., searched: _Optional[_Iterable[str]] = ..., shard_count: _Optional[int] = ..., shards: _Optional[_Iterable[int]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...
