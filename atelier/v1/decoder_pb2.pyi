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
    __slots__ = ("item", "code", "model_version", "lower", "upper", "sliders", "category")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    SLIDERS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    item: _common_pb2.Item
    code: _common_pb2.LatentCode
    model_version: int
    lower: _containers.RepeatedScalarFieldContainer[float]
    upper: _containers.RepeatedScalarFieldContainer[float]
    sliders: SliderBasis
    category: _common_pb2.CategoryPrediction
    def __init__(self, item: _Optional[_Union[_common_pb2.Item, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.LatentCode, _Mapping]] = ..., model_version: _Optional[int] = ..., lower: _Optional[_Iterable[float]] = ..., upper: _Optional[_Iterable[float]] = ..., sliders: _Optional[_Union[SliderBasis, _Mapping]] = ..., category: _Optional[_Union[_common_pb2.CategoryPrediction, _Mapping]] = ...) -> None: ...

class SliderBasis(_message.Message):
    __slots__ = ("origin", "directions", "lower", "upper", "labels", "explained_variance")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    origin: _common_pb2.LatentVector
    directions: _containers.RepeatedCompositeFieldContainer[_common_pb2.LatentVector]
    lower: _containers.RepeatedScalarFieldContainer[float]
    upper: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedScalarFieldContainer[str]
    explained_variance: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, origin: _Optional[_Union[_common_pb2.LatentVector, _Mapping]] = ..., directions: _Optional[_Iterable[_Union[_common_pb2.LatentVector, _Mapping]]] = ..., lower: _Optional[_Iterable[float]] = ..., upper: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[str]] = ..., explained_variance: _Optional[_Iterable[float]] = ...) -> None: ...

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

class ListCategoriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CategoryCount(_message.Message):
    __slots__ = ("sub_category", "master_category", "items")
    SUB_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MASTER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    sub_category: str
    master_category: str
    items: int
    def __init__(self, sub_category: _Optional[str] = ..., master_category: _Optional[str] = ..., items: _Optional[int] = ...) -> None: ...

class ListCategoriesResponse(_message.Message):
    __slots__ = ("categories", "model_version")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[CategoryCount]
    model_version: int
    def __init__(self, categories: _Optional[_Iterable[_Union[CategoryCount, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...
