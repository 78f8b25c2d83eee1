from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    PRESENT: _ClassVar[Status]
    NOT_FOUND: _ClassVar[Status]
    OUTSIDE_MAX_AGE: _ClassVar[Status]
    UNAVAILABLE: _ClassVar[Status]
STATUS_UNSPECIFIED: Status
PRESENT: Status
NOT_FOUND: Status
OUTSIDE_MAX_AGE: Status
UNAVAILABLE: Status

class Int64List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class DoubleList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class BoolList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class FloatVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class FloatVectorList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[FloatVector]
    def __init__(self, values: _Optional[_Iterable[_Union[FloatVector, _Mapping]]] = ...) -> None: ...

class EntityColumn(_message.Message):
    __slots__ = ("name", "int64_values", "string_values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    int64_values: Int64List
    string_values: StringList
    def __init__(self, name: _Optional[str] = ..., int64_values: _Optional[_Union[Int64List, _Mapping]] = ..., string_values: _Optional[_Union[StringList, _Mapping]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("entities", "features", "feature_service", "full_feature_names", "request_data")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    FULL_FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DATA_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[EntityColumn]
    features: _containers.RepeatedScalarFieldContainer[str]
    feature_service: str
    full_feature_names: bool
    request_data: _containers.RepeatedCompositeFieldContainer[RequestColumn]
    def __init__(self, entities: _Optional[_Iterable[_Union[EntityColumn, _Mapping]]] = ..., features: _Optional[_Iterable[str]] = ..., feature_service: _Optional[str] = ..., full_feature_names: _Optional[bool] = ..., request_data: _Optional[_Iterable[_Union[RequestColumn, _Mapping]]] = ...) -> None: ...

class RequestColumn(_message.Message):
    __slots__ = ("name", "int64_values", "double_values", "string_values", "bool_values", "null_rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUES_FIELD_NUMBER: _ClassVar[int]
    NULL_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    int64_values: Int64List
    double_values: DoubleList
    string_values: StringList
    bool_values: BoolList
    null_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., int64_values: _Optional[_Union[Int64List, _Mapping]] = ..., double_values: _Optional[_Union[DoubleList, _Mapping]] = ..., string_values: _Optional[_Union[StringList, _Mapping]] = ..., bool_values: _Optional[_Union[BoolList, _Mapping]] = ..., null_rows: _Optional[_Iterable[int]] = ...) -> None: ...

class FeatureColumn(_message.Message):
    __slots__ = ("name", "int64_values", "double_values", "string_values", "bool_values", "timestamp_values", "vector_values", "statuses", "event_timestamps", "null_rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    NULL_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    int64_values: Int64List
    double_values: DoubleList
    string_values: StringList
    bool_values: BoolList
    timestamp_values: Int64List
    vector_values: FloatVectorList
    statuses: _containers.RepeatedScalarFieldContainer[Status]
    event_timestamps: _containers.RepeatedScalarFieldContainer[int]
    null_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., int64_values: _Optional[_Union[Int64List, _Mapping]] = ..., double_values: _Optional[_Union[DoubleList, _Mapping]] = ..., string_values: _Optional[_Union[StringList, _Mapping]] = ..., bool_values: _Optional[_Union[BoolList, _Mapping]] = ..., timestamp_values: _Optional[_Union[Int64List, _Mapping]] = ..., vector_values: _Optional[_Union[FloatVectorList, _Mapping]] = ..., statuses: _Optional[_Iterable[_Union[Status, str]]] = ..., event_timestamps: _Optional[_Iterable[int]] = ..., null_rows: _Optional[_Iterable[int]] = ...) -> None: ...

class JoinMetadata(_message.Message):
    __slots__ = ("feature_names", "registry_version", "trace_id", "partial")
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    registry_version: int
    trace_id: str
    partial: bool
    def __init__(self, feature_names: _Optional[_Iterable[str]] = ..., registry_version: _Optional[int] = ..., trace_id: _Optional[str] = ..., partial: _Optional[bool] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("metadata", "results")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    metadata: JoinMetadata
    results: _containers.RepeatedCompositeFieldContainer[FeatureColumn]
    def __init__(self, metadata: _Optional[_Union[JoinMetadata, _Mapping]] = ..., results: _Optional[_Iterable[_Union[FeatureColumn, _Mapping]]] = ...) -> None: ...

class PushColumn(_message.Message):
    __slots__ = ("name", "int64_values", "double_values", "string_values", "bool_values", "timestamp_values", "vector_values", "null_rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_VALUES_FIELD_NUMBER: _ClassVar[int]
    NULL_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    int64_values: Int64List
    double_values: DoubleList
    string_values: StringList
    bool_values: BoolList
    timestamp_values: Int64List
    vector_values: FloatVectorList
    null_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., int64_values: _Optional[_Union[Int64List, _Mapping]] = ..., double_values: _Optional[_Union[DoubleList, _Mapping]] = ..., string_values: _Optional[_Union[StringList, _Mapping]] = ..., bool_values: _Optional[_Union[BoolList, _Mapping]] = ..., timestamp_values: _Optional[_Union[Int64List, _Mapping]] = ..., vector_values: _Optional[_Union[FloatVectorList, _Mapping]] = ..., null_rows: _Optional[_Iterable[int]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("feature_view", "columns")
    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    feature_view: str
    columns: _containers.RepeatedCompositeFieldContainer[PushColumn]
    def __init__(self, feature_view: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[PushColumn, _Mapping]]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("rows_written", "data_version")
    ROWS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    rows_written: int
    data_version: int
    def __init__(self, rows_written: _Optional[int] = ..., data_version: _Optional[int] = ...) -> None: ...
