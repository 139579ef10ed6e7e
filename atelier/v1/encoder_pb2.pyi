from atelier.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeRequest(_message.Message):
    __slots__ = ("image", "model_version")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model_version: int
    def __init__(self, image: _Optional[bytes] = ..., model_version: _Optional[int] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("code", "model_version")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    code: _common_pb2.LatentCode
    model_version: int
    def __init__(self, code: _Optional[_Union[_common_pb2.LatentCode, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class CatalogueEntry(_message.Message):
    __slots__ = ("item", "image")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    item: _common_pb2.Item
    image: bytes
    def __init__(self, item: _Optional[_Union[_common_pb2.Item, _Mapping]] = ..., image: _Optional[bytes] = ...) -> None: ...

class SubmitCatalogueRequest(_message.Message):
    __slots__ = ("csv_path", "entries", "image_dir", "model_version")
    CSV_PATH_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    csv_path: str
    entries: CatalogueEntries
    image_dir: str
    model_version: int
    def __init__(self, csv_path: _Optional[str] = ..., entries: _Optional[_Union[CatalogueEntries, _Mapping]] = ..., image_dir: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class CatalogueEntries(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[CatalogueEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[CatalogueEntry, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id", "max_failures")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    max_failures: int
    def __init__(self, job_id: _Optional[str] = ..., max_failures: _Optional[int] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListGenerationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GenerationInfo(_message.Message):
    __slots__ = ("model_version", "items", "served")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    items: int
    served: bool
    def __init__(self, model_version: _Optional[int] = ..., items: _Optional[int] = ..., served: _Optional[bool] = ...) -> None: ...

class ListGenerationsResponse(_message.Message):
    __slots__ = ("generations", "served_version")
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    generations: _containers.RepeatedCompositeFieldContainer[GenerationInfo]
    served_version: int
    def __init__(self, generations: _Optional[_Iterable[_Union[GenerationInfo, _Mapping]]] = ..., served_version: _Optional[int] = ...) -> None: ...

class ServeGenerationRequest(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    def __init__(self, model_version: _Optional[int] = ...) -> None: ...

class ServeGenerationResponse(_message.Message):
    __slots__ = ("model_version", "previous_version")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    previous_version: int
    def __init__(self, model_version: _Optional[int] = ..., previous_version: _Optional[int] = ...) -> None: ...

class RemoveGenerationRequest(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    def __init__(self, model_version: _Optional[int] = ...) -> None: ...

class RemoveGenerationResponse(_message.Message):
    __slots__ = ("removed_keys",)
    REMOVED_KEYS_FIELD_NUMBER: _ClassVar[int]
    removed_keys: int
    def __init__(self, removed_keys: _Optional[int] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("entries", "model_version")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[CatalogueEntry]
    model_version: int
    def __init__(self, entries: _Optional[_Iterable[_Union[CatalogueEntry, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...

class ItemOutcome(_message.Message):
    __slots__ = ("item_id", "ok", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    ok: bool
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("outcomes", "model_version", "change_sequence")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ItemOutcome]
    model_version: int
    change_sequence: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ItemOutcome, _Mapping]]] = ..., model_version: _Optional[int] = ..., change_sequence: _Optional[int] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("item_ids", "model_version")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    model_version: int
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., model_version: _Optional[int] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted", "not_found", "model_version", "change_sequence")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    model_version: int
    change_sequence: int
    def __init__(self, deleted: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ..., model_version: _Optional[int] = ..., change_sequence: _Optional[int] = ...) -> None: ...
