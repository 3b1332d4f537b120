from protos import lightning_pb2 as _lightning_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LookupModifier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEFAULT: _ClassVar[LookupModifier]
    HTLC_SET_ONLY: _ClassVar[LookupModifier]
    HTLC_SET_BLANK: _ClassVar[LookupModifier]
DEFAULT: LookupModifier
HTLC_SET_ONLY: LookupModifier
HTLC_SET_BLANK: LookupModifier

class SubscribeSingleInvoiceRequest(_message.Message):
    __slots__ = ("r_hash",)
    R_HASH_FIELD_NUMBER: _ClassVar[int]
    r_hash: bytes
    def __init__(self, r_hash: _Optional[bytes] = ...) -> None: ...

class AddHoldInvoiceRequest(_message.Message):
    __slots__ = ("memo", "hash", "value", "description_hash", "expiry", "fallback_addr", "cltv_expiry", "route_hints", "private", "value_msat")
    MEMO_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_HASH_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ADDR_FIELD_NUMBER: _ClassVar[int]
    CLTV_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_HINTS_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_MSAT_FIELD_NUMBER: _ClassVar[int]
    memo: str
    hash: bytes
    value: int
    description_hash: bytes
    expiry: int
    fallback_addr: str
    cltv_expiry: int
    route_hints: _containers.RepeatedCompositeFieldContainer[_lightning_pb2.RouteHint]
    private: bool
    value_msat: int
    def __init__(self, memo: _Optional[str] = ..., hash: _Optional[bytes] = ..., value: _Optional[int] = ..., description_hash: _Optional[bytes] = ..., expiry: _Optional[int] = ..., fallback_addr: _Optional[str] = ..., cltv_expiry: _Optional[int] = ..., route_hints: _Optional[_Iterable[_Union[_lightning_pb2.RouteHint, _Mapping]]] = ..., private: _Optional[bool] = ..., value_msat: _Optional[int] = ...) -> None: ...

class AddHoldInvoiceResp(_message.Message):
    __slots__ = ("payment_request", "add_index", "payment_addr")
    PAYMENT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ADD_INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    payment_request: str
    add_index: int
    payment_addr: bytes
    def __init__(self, payment_request: _Optional[str] = ..., add_index: _Optional[int] = ..., payment_addr: _Optional[bytes] = ...) -> None: ...

class SettleInvoiceMsg(_message.Message):
    __slots__ = ("preimage",)
    PREIMAGE_FIELD_NUMBER: _ClassVar[int]
    preimage: bytes
    def __init__(self, preimage: _Optional[bytes] = ...) -> None: ...

class SettleInvoiceResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelInvoiceMsg(_message.Message):
    __slots__ = ("payment_hash",)
    PAYMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    payment_hash: bytes
    def __init__(self, payment_hash: _Optional[bytes] = ...) -> None: ...

class CancelInvoiceResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LookupInvoiceMsg(_message.Message):
    __slots__ = ("payment_hash", "payment_addr", "set_id", "lookup_modifier")
    PAYMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_MODIFIER_FIELD_NUMBER: _ClassVar[int]
    payment_hash: bytes
    payment_addr: bytes
    set_id: bytes
    lookup_modifier: LookupModifier
    def __init__(self, payment_hash: _Optional[bytes] = ..., payment_addr: _Optional[bytes] = ..., set_id: _Optional[bytes] = ..., lookup_modifier: _Optional[_Union[LookupModifier, str]] = ...) -> None: ...
