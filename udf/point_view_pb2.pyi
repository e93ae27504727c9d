from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PointHead(_message.Message):
    __slots__ = ("time", "group")
    TIME_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    time: int
    group: str
    def __init__(self, time: _Optional[int] = ..., group: _Optional[str] = ...) -> None: ...
