from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("protocol_version", "model", "client_name")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    model: str
    client_name: str
    def __init__(self, protocol_version: _Optional[int] = ..., model: _Optional[str] = ..., client_name: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "model", "card_json", "card_digest", "tokenizer", "max_batch", "provider", "max_frame_bytes", "max_tokens", "keeps_prepared", "prepared_store", "max_new_tokens")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    CARD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KEEPS_PREPARED_FIELD_NUMBER: _ClassVar[int]
    PREPARED_STORE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    model: str
    card_json: str
    card_digest: str
    tokenizer: _containers.RepeatedCompositeFieldContainer[TokenizerFile]
    max_batch: int
    provider: str
    max_frame_bytes: int
    max_tokens: int
    keeps_prepared: bool
    prepared_store: str
    max_new_tokens: int
    def __init__(self, protocol_version: _Optional[int] = ..., model: _Optional[str] = ..., card_json: _Optional[str] = ..., card_digest: _Optional[str] = ..., tokenizer: _Optional[_Iterable[_Union[TokenizerFile, _Mapping]]] = ..., max_batch: _Optional[int] = ..., provider: _Optional[str] = ..., max_frame_bytes: _Optional[int] = ..., max_tokens: _Optional[int] = ..., keeps_prepared: _Optional[bool] = ..., prepared_store: _Optional[str] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class TokenizerFile(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Start(_message.Message):
    __slots__ = ("batch", "seq_len", "attention_mask", "output", "prepared_id", "prepare", "hide_lengths", "generate")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PREPARED_ID_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    HIDE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    batch: int
    seq_len: int
    attention_mask: bytes
    output: str
    prepared_id: str
    prepare: bool
    hide_lengths: bool
    generate: GenerateStart
    def __init__(self, batch: _Optional[int] = ..., seq_len: _Optional[int] = ..., attention_mask: _Optional[bytes] = ..., output: _Optional[str] = ..., prepared_id: _Optional[str] = ..., prepare: _Optional[bool] = ..., hide_lengths: _Optional[bool] = ..., generate: _Optional[_Union[GenerateStart, _Mapping]] = ...) -> None: ...

class PreparedAnswer(_message.Message):
    __slots__ = ("id", "accepted", "reason", "expires_in")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    id: str
    accepted: bool
    reason: str
    expires_in: float
    def __init__(self, id: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., expires_in: _Optional[float] = ...) -> None: ...

class GenerateStart(_message.Message):
    __slots__ = ("prompt_len", "max_new_tokens")
    PROMPT_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_len: int
    max_new_tokens: int
    def __init__(self, prompt_len: _Optional[int] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("seq", "tag", "clock", "scope_clock", "data", "more", "kind", "shape", "dtype", "label")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    SCOPE_CLOCK_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    tag: str
    clock: int
    scope_clock: int
    data: bytes
    more: bool
    kind: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    label: str
    def __init__(self, seq: _Optional[int] = ..., tag: _Optional[str] = ..., clock: _Optional[int] = ..., scope_clock: _Optional[int] = ..., data: _Optional[bytes] = ..., more: _Optional[bool] = ..., kind: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("hello", "start", "frame", "goodbye")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    start: Start
    frame: Frame
    goodbye: Goodbye
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., start: _Optional[_Union[Start, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "frame", "prepared")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    frame: Frame
    prepared: PreparedAnswer
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., prepared: _Optional[_Union[PreparedAnswer, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "approx", "head", "layers", "hidden", "max_positions", "card_digest", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    APPROX_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    CARD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    approx: str
    head: str
    layers: int
    hidden: int
    max_positions: int
    card_digest: str
    kind: str
    def __init__(self, name: _Optional[str] = ..., approx: _Optional[str] = ..., head: _Optional[str] = ..., layers: _Optional[int] = ..., hidden: _Optional[int] = ..., max_positions: _Optional[int] = ..., card_digest: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("protocol_version", "models")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, protocol_version: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
