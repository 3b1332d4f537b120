from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvoiceHTLCState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCEPTED: _ClassVar[InvoiceHTLCState]
    SETTLED: _ClassVar[InvoiceHTLCState]
    CANCELED: _ClassVar[InvoiceHTLCState]

class PaymentFailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_NONE: _ClassVar[PaymentFailureReason]
    FAILURE_REASON_TIMEOUT: _ClassVar[PaymentFailureReason]
    FAILURE_REASON_NO_ROUTE: _ClassVar[PaymentFailureReason]
    FAILURE_REASON_ERROR: _ClassVar[PaymentFailureReason]
    FAILURE_REASON_INCORRECT_PAYMENT_DETAILS: _ClassVar[PaymentFailureReason]
    FAILURE_REASON_INSUFFICIENT_BALANCE: _ClassVar[PaymentFailureReason]
    FAILURE_REASON_CANCELED: _ClassVar[PaymentFailureReason]
ACCEPTED: InvoiceHTLCState
SETTLED: InvoiceHTLCState
CANCELED: InvoiceHTLCState
FAILURE_REASON_NONE: PaymentFailureReason
FAILURE_REASON_TIMEOUT: PaymentFailureReason
FAILURE_REASON_NO_ROUTE: PaymentFailureReason
FAILURE_REASON_ERROR: PaymentFailureReason
FAILURE_REASON_INCORRECT_PAYMENT_DETAILS: PaymentFailureReason
FAILURE_REASON_INSUFFICIENT_BALANCE: PaymentFailureReason
FAILURE_REASON_CANCELED: PaymentFailureReason

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("identity_pubkey", "alias", "num_pending_channels", "num_active_channels", "num_peers", "block_height", "block_hash", "synced_to_chain", "uris", "best_header_timestamp", "version", "num_inactive_channels", "chains", "color", "synced_to_graph", "features", "commit_hash", "wallet_synced")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Feature
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[Feature, _Mapping]] = ...) -> None: ...
    IDENTITY_PUBKEY_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    NUM_PENDING_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NUM_ACTIVE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NUM_PEERS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    SYNCED_TO_CHAIN_FIELD_NUMBER: _ClassVar[int]
    URIS_FIELD_NUMBER: _ClassVar[int]
    BEST_HEADER_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_INACTIVE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    SYNCED_TO_GRAPH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_HASH_FIELD_NUMBER: _ClassVar[int]
    WALLET_SYNCED_FIELD_NUMBER: _ClassVar[int]
    identity_pubkey: str
    alias: str
    num_pending_channels: int
    num_active_channels: int
    num_peers: int
    block_height: int
    block_hash: str
    synced_to_chain: bool
    uris: _containers.RepeatedScalarFieldContainer[str]
    best_header_timestamp: int
    version: str
    num_inactive_channels: int
    chains: _containers.RepeatedCompositeFieldContainer[Chain]
    color: str
    synced_to_graph: bool
    features: _containers.MessageMap[int, Feature]
    commit_hash: str
    wallet_synced: bool
    def __init__(self, identity_pubkey: _Optional[str] = ..., alias: _Optional[str] = ..., num_pending_channels: _Optional[int] = ..., num_active_channels: _Optional[int] = ..., num_peers: _Optional[int] = ..., block_height: _Optional[int] = ..., block_hash: _Optional[str] = ..., synced_to_chain: _Optional[bool] = ..., uris: _Optional[_Iterable[str]] = ..., best_header_timestamp: _Optional[int] = ..., version: _Optional[str] = ..., num_inactive_channels: _Optional[int] = ..., chains: _Optional[_Iterable[_Union[Chain, _Mapping]]] = ..., color: _Optional[str] = ..., synced_to_graph: _Optional[bool] = ..., features: _Optional[_Mapping[int, Feature]] = ..., commit_hash: _Optional[str] = ..., wallet_synced: _Optional[bool] = ...) -> None: ...

class Chain(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: str
    def __init__(self, network: _Optional[str] = ...) -> None: ...

class ChannelBalanceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Amount(_message.Message):
    __slots__ = ("sat", "msat")
    SAT_FIELD_NUMBER: _ClassVar[int]
    MSAT_FIELD_NUMBER: _ClassVar[int]
    sat: int
    msat: int
    def __init__(self, sat: _Optional[int] = ..., msat: _Optional[int] = ...) -> None: ...

class ChannelBalanceResponse(_message.Message):
    __slots__ = ("balance", "pending_open_balance", "local_balance", "remote_balance", "unsettled_local_balance", "unsettled_remote_balance", "pending_open_local_balance", "pending_open_remote_balance")
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    PENDING_OPEN_BALANCE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_BALANCE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_BALANCE_FIELD_NUMBER: _ClassVar[int]
    UNSETTLED_LOCAL_BALANCE_FIELD_NUMBER: _ClassVar[int]
    UNSETTLED_REMOTE_BALANCE_FIELD_NUMBER: _ClassVar[int]
    PENDING_OPEN_LOCAL_BALANCE_FIELD_NUMBER: _ClassVar[int]
    PENDING_OPEN_REMOTE_BALANCE_FIELD_NUMBER: _ClassVar[int]
    balance: int
    pending_open_balance: int
    local_balance: Amount
    remote_balance: Amount
    unsettled_local_balance: Amount
    unsettled_remote_balance: Amount
    pending_open_local_balance: Amount
    pending_open_remote_balance: Amount
    def __init__(self, balance: _Optional[int] = ..., pending_open_balance: _Optional[int] = ..., local_balance: _Optional[_Union[Amount, _Mapping]] = ..., remote_balance: _Optional[_Union[Amount, _Mapping]] = ..., unsettled_local_balance: _Optional[_Union[Amount, _Mapping]] = ..., unsettled_remote_balance: _Optional[_Union[Amount, _Mapping]] = ..., pending_open_local_balance: _Optional[_Union[Amount, _Mapping]] = ..., pending_open_remote_balance: _Optional[_Union[Amount, _Mapping]] = ...) -> None: ...

class HopHint(_message.Message):
    __slots__ = ("node_id", "chan_id", "fee_base_msat", "fee_proportional_millionths", "cltv_expiry_delta")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHAN_ID_FIELD_NUMBER: _ClassVar[int]
    FEE_BASE_MSAT_FIELD_NUMBER: _ClassVar[int]
    FEE_PROPORTIONAL_MILLIONTHS_FIELD_NUMBER: _ClassVar[int]
    CLTV_EXPIRY_DELTA_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    chan_id: int
    fee_base_msat: int
    fee_proportional_millionths: int
    cltv_expiry_delta: int
    def __init__(self, node_id: _Optional[str] = ..., chan_id: _Optional[int] = ..., fee_base_msat: _Optional[int] = ..., fee_proportional_millionths: _Optional[int] = ..., cltv_expiry_delta: _Optional[int] = ...) -> None: ...

class RouteHint(_message.Message):
    __slots__ = ("hop_hints",)
    HOP_HINTS_FIELD_NUMBER: _ClassVar[int]
    hop_hints: _containers.RepeatedCompositeFieldContainer[HopHint]
    def __init__(self, hop_hints: _Optional[_Iterable[_Union[HopHint, _Mapping]]] = ...) -> None: ...

class InvoiceHTLC(_message.Message):
    __slots__ = ("chan_id", "htlc_index", "amt_msat", "accept_height", "accept_time", "resolve_time", "expiry_height", "state", "mpp_total_amt_msat")
    CHAN_ID_FIELD_NUMBER: _ClassVar[int]
    HTLC_INDEX_FIELD_NUMBER: _ClassVar[int]
    AMT_MSAT_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MPP_TOTAL_AMT_MSAT_FIELD_NUMBER: _ClassVar[int]
    chan_id: int
    htlc_index: int
    amt_msat: int
    accept_height: int
    accept_time: int
    resolve_time: int
    expiry_height: int
    state: InvoiceHTLCState
    mpp_total_amt_msat: int
    def __init__(self, chan_id: _Optional[int] = ..., htlc_index: _Optional[int] = ..., amt_msat: _Optional[int] = ..., accept_height: _Optional[int] = ..., accept_time: _Optional[int] = ..., resolve_time: _Optional[int] = ..., expiry_height: _Optional[int] = ..., state: _Optional[_Union[InvoiceHTLCState, str]] = ..., mpp_total_amt_msat: _Optional[int] = ...) -> None: ...

class Invoice(_message.Message):
    __slots__ = ("memo", "r_preimage", "r_hash", "value", "settled", "creation_date", "settle_date", "payment_request", "description_hash", "expiry", "fallback_addr", "cltv_expiry", "route_hints", "private", "add_index", "settle_index", "amt_paid", "amt_paid_sat", "amt_paid_msat", "state", "htlcs", "value_msat", "features", "is_keysend", "payment_addr", "is_amp")
    class InvoiceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OPEN: _ClassVar[Invoice.InvoiceState]
        SETTLED: _ClassVar[Invoice.InvoiceState]
        CANCELED: _ClassVar[Invoice.InvoiceState]
        ACCEPTED: _ClassVar[Invoice.InvoiceState]
    OPEN: Invoice.InvoiceState
    SETTLED: Invoice.InvoiceState
    CANCELED: Invoice.InvoiceState
    ACCEPTED: Invoice.InvoiceState
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Feature
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[Feature, _Mapping]] = ...) -> None: ...
    MEMO_FIELD_NUMBER: _ClassVar[int]
    R_PREIMAGE_FIELD_NUMBER: _ClassVar[int]
    R_HASH_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    CREATION_DATE_FIELD_NUMBER: _ClassVar[int]
    SETTLE_DATE_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_HASH_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ADDR_FIELD_NUMBER: _ClassVar[int]
    CLTV_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_HINTS_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    ADD_INDEX_FIELD_NUMBER: _ClassVar[int]
    SETTLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    AMT_PAID_FIELD_NUMBER: _ClassVar[int]
    AMT_PAID_SAT_FIELD_NUMBER: _ClassVar[int]
    AMT_PAID_MSAT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HTLCS_FIELD_NUMBER: _ClassVar[int]
    VALUE_MSAT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    IS_KEYSEND_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    IS_AMP_FIELD_NUMBER: _ClassVar[int]
    memo: str
    r_preimage: bytes
    r_hash: bytes
    value: int
    settled: bool
    creation_date: int
    settle_date: int
    payment_request: str
    description_hash: bytes
    expiry: int
    fallback_addr: str
    cltv_expiry: int
    route_hints: _containers.RepeatedCompositeFieldContainer[RouteHint]
    private: bool
    add_index: int
    settle_index: int
    amt_paid: int
    amt_paid_sat: int
    amt_paid_msat: int
    state: Invoice.InvoiceState
    htlcs: _containers.RepeatedCompositeFieldContainer[InvoiceHTLC]
    value_msat: int
    features: _containers.MessageMap[int, Feature]
    is_keysend: bool
    payment_addr: bytes
    is_amp: bool
    def __init__(self, memo: _Optional[str] = ..., r_preimage: _Optional[bytes] = ..., r_hash: _Optional[bytes] = ..., value: _Optional[int] = ..., settled: _Optional[bool] = ..., creation_date: _Optional[int] = ..., settle_date: _Optional[int] = ..., payment_request: _Optional[str] = ..., description_hash: _Optional[bytes] = ..., expiry: _Optional[int] = ..., fallback_addr: _Optional[str] = ..., cltv_expiry: _Optional[int] = ..., route_hints: _Optional[_Iterable[_Union[RouteHint, _Mapping]]] = ..., private: _Optional[bool] = ..., add_index: _Optional[int] = ..., settle_index: _Optional[int] = ..., amt_paid: _Optional[int] = ..., amt_paid_sat: _Optional[int] = ..., amt_paid_msat: _Optional[int] = ..., state: _Optional[_Union[Invoice.InvoiceState, str]] = ..., htlcs: _Optional[_Iterable[_Union[InvoiceHTLC, _Mapping]]] = ..., value_msat: _Optional[int] = ..., features: _Optional[_Mapping[int, Feature]] = ..., is_keysend: _Optional[bool] = ..., payment_addr: _Optional[bytes] = ..., is_amp: _Optional[bool] = ...) -> None: ...

class AddInvoiceResponse(_message.Message):
    __slots__ = ("r_hash", "payment_request", "add_index", "payment_addr")
    R_HASH_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ADD_INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    r_hash: bytes
    payment_request: str
    add_index: int
    payment_addr: bytes
    def __init__(self, r_hash: _Optional[bytes] = ..., payment_request: _Optional[str] = ..., add_index: _Optional[int] = ..., payment_addr: _Optional[bytes] = ...) -> None: ...

class PaymentHash(_message.Message):
    __slots__ = ("r_hash_str", "r_hash")
    R_HASH_STR_FIELD_NUMBER: _ClassVar[int]
    R_HASH_FIELD_NUMBER: _ClassVar[int]
    r_hash_str: str
    r_hash: bytes
    def __init__(self, r_hash_str: _Optional[str] = ..., r_hash: _Optional[bytes] = ...) -> None: ...

class PayReqString(_message.Message):
    __slots__ = ("pay_req",)
    PAY_REQ_FIELD_NUMBER: _ClassVar[int]
    pay_req: str
    def __init__(self, pay_req: _Optional[str] = ...) -> None: ...

class Feature(_message.Message):
    __slots__ = ("name", "is_required", "is_known")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    IS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    name: str
    is_required: bool
    is_known: bool
    def __init__(self, name: _Optional[str] = ..., is_required: _Optional[bool] = ..., is_known: _Optional[bool] = ...) -> None: ...

class PayReq(_message.Message):
    __slots__ = ("destination", "payment_hash", "num_satoshis", "timestamp", "expiry", "description", "description_hash", "fallback_addr", "cltv_expiry", "route_hints", "payment_addr", "num_msat", "features")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Feature
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[Feature, _Mapping]] = ...) -> None: ...
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    NUM_SATOSHIS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_HASH_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ADDR_FIELD_NUMBER: _ClassVar[int]
    CLTV_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_HINTS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    NUM_MSAT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    destination: str
    payment_hash: str
    num_satoshis: int
    timestamp: int
    expiry: int
    description: str
    description_hash: str
    fallback_addr: str
    cltv_expiry: int
    route_hints: _containers.RepeatedCompositeFieldContainer[RouteHint]
    payment_addr: bytes
    num_msat: int
    features: _containers.MessageMap[int, Feature]
    def __init__(self, destination: _Optional[str] = ..., payment_hash: _Optional[str] = ..., num_satoshis: _Optional[int] = ..., timestamp: _Optional[int] = ..., expiry: _Optional[int] = ..., description: _Optional[str] = ..., description_hash: _Optional[str] = ..., fallback_addr: _Optional[str] = ..., cltv_expiry: _Optional[int] = ..., route_hints: _Optional[_Iterable[_Union[RouteHint, _Mapping]]] = ..., payment_addr: _Optional[bytes] = ..., num_msat: _Optional[int] = ..., features: _Optional[_Mapping[int, Feature]] = ...) -> None: ...

class InvoiceSubscription(_message.Message):
    __slots__ = ("add_index", "settle_index")
    ADD_INDEX_FIELD_NUMBER: _ClassVar[int]
    SETTLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    add_index: int
    settle_index: int
    def __init__(self, add_index: _Optional[int] = ..., settle_index: _Optional[int] = ...) -> None: ...

class HTLCAttempt(_message.Message):
    __slots__ = ("status", "attempt_time_ns", "resolve_time_ns", "preimage", "attempt_id")
    class HTLCStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        IN_FLIGHT: _ClassVar[HTLCAttempt.HTLCStatus]
        SUCCEEDED: _ClassVar[HTLCAttempt.HTLCStatus]
        FAILED: _ClassVar[HTLCAttempt.HTLCStatus]
    IN_FLIGHT: HTLCAttempt.HTLCStatus
    SUCCEEDED: HTLCAttempt.HTLCStatus
    FAILED: HTLCAttempt.HTLCStatus
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PREIMAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    status: HTLCAttempt.HTLCStatus
    attempt_time_ns: int
    resolve_time_ns: int
    preimage: bytes
    attempt_id: int
    def __init__(self, status: _Optional[_Union[HTLCAttempt.HTLCStatus, str]] = ..., attempt_time_ns: _Optional[int] = ..., resolve_time_ns: _Optional[int] = ..., preimage: _Optional[bytes] = ..., attempt_id: _Optional[int] = ...) -> None: ...

class Payment(_message.Message):
    __slots__ = ("payment_hash", "value", "creation_date", "fee", "payment_preimage", "value_sat", "value_msat", "payment_request", "status", "fee_sat", "fee_msat", "creation_time_ns", "htlcs", "payment_index", "failure_reason")
    class PaymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[Payment.PaymentStatus]
        IN_FLIGHT: _ClassVar[Payment.PaymentStatus]
        SUCCEEDED: _ClassVar[Payment.PaymentStatus]
        FAILED: _ClassVar[Payment.PaymentStatus]
        INITIATED: _ClassVar[Payment.PaymentStatus]
    UNKNOWN: Payment.PaymentStatus
    IN_FLIGHT: Payment.PaymentStatus
    SUCCEEDED: Payment.PaymentStatus
    FAILED: Payment.PaymentStatus
    INITIATED: Payment.PaymentStatus
    PAYMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CREATION_DATE_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_PREIMAGE_FIELD_NUMBER: _ClassVar[int]
    VALUE_SAT_FIELD_NUMBER: _ClassVar[int]
    VALUE_MSAT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FEE_SAT_FIELD_NUMBER: _ClassVar[int]
    FEE_MSAT_FIELD_NUMBER: _ClassVar[int]
    CREATION_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    HTLCS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    payment_hash: str
    value: int
    creation_date: int
    fee: int
    payment_preimage: str
    value_sat: int
    value_msat: int
    payment_request: str
    status: Payment.PaymentStatus
    fee_sat: int
    fee_msat: int
    creation_time_ns: int
    htlcs: _containers.RepeatedCompositeFieldContainer[HTLCAttempt]
    payment_index: int
    failure_reason: PaymentFailureReason
    def __init__(self, payment_hash: _Optional[str] = ..., value: _Optional[int] = ..., creation_date: _Optional[int] = ..., fee: _Optional[int] = ..., payment_preimage: _Optional[str] = ..., value_sat: _Optional[int] = ..., value_msat: _Optional[int] = ..., payment_request: _Optional[str] = ..., status: _Optional[_Union[Payment.PaymentStatus, str]] = ..., fee_sat: _Optional[int] = ..., fee_msat: _Optional[int] = ..., creation_time_ns: _Optional[int] = ..., htlcs: _Optional[_Iterable[_Union[HTLCAttempt, _Mapping]]] = ..., payment_index: _Optional[int] = ..., failure_reason: _Optional[_Union[PaymentFailureReason, str]] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("entity", "actions")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    entity: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entity: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ...) -> None: ...

class MacaroonId(_message.Message):
    __slots__ = ("nonce", "storageId", "ops")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    STORAGEID_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    storageId: bytes
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    def __init__(self, nonce: _Optional[bytes] = ..., storageId: _Optional[bytes] = ..., ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ...) -> None: ...

class MacaroonPermission(_message.Message):
    __slots__ = ("entity", "action")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    entity: str
    action: str
    def __init__(self, entity: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...
