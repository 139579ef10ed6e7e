from atelier.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecodeRequest(_message.Message):
    __slots__ = ("codes", "model_version")
    CODES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    codes: _containers.RepeatedCompositeFieldContainer[_common_pb2.LatentVector]
    model_version: int
    def __init__(self, codes: _Optional[_Iterable[_Union[_common_pb2.LatentVector, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("png", "model_version", "height", "width")
    PNG_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    png: _containers.RepeatedScalarFieldContainer[bytes]
    model_version: int
    height: int
    width: int
    def __init__(self, png: _Optional[_Iterable[bytes]] = ..., model_version: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class RandomStartRequest(_message.Message):
    __slots__ = ("category", "seed")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    category: str
    seed: int
    def __init__(self, category: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class RandomStartResponse(_message.Message):
    __slots__ = ("item", "code", "model_version", "lower", "upper")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    item: _common_pb2.Item
    code: _common_pb2.LatentCode
    model_version: int
    lower: _containers.RepeatedScalarFieldContainer[float]
    upper: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, item: _Optional[_Union[_common_pb2.Item, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.LatentCode, _Mapping]] = ..., model_version: _Optional[int] = ..., lower: _Optional[_Iterable[float]] = ..., upper: _Optional[_Iterable[float]] = ...) -> None: ...

class TraverseRequest(_message.Message):
    __slots__ = ("start", "dimension", "low", "high", "steps", "model_version")
    START_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    start: _common_pb2.LatentVector
    dimension: int
    low: float
    high: float
    steps: int
    model_version: int
    def __init__(self, start: _Optional[_Union[_common_pb2.LatentVector, _Mapping]] = ..., dimension: _Optional[int] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., steps: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...
