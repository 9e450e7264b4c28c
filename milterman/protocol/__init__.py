"""The sans-I/O milter protocol core: bytes in, typed messages out, one state machine per side.

Nothing here touches sockets or gevent; the network layer, the
manager, the server and every tool build on these names.
"""

from .codec import CommandDecoder, Decoder, ReplyDecoder, decode_one, encode
from .connection import MilterConnection
from .errors import (
    FramingError,
    LocalProtocolError,
    MalformedPacket,
    NegotiationError,
    ProtocolError,
    RemoteProtocolError,
    UnexpectedMessage,
)
from .flags import (
    BODY_CHUNK_SIZE,
    MAX_DATA_SIZE_1M,
    MAX_DATA_SIZE_DEFAULT,
    MAX_VERSION,
    Action,
    MacroStage,
    Step,
    action_names,
    step_names,
)
from .macros import MacroStore
from .messages import (
    ABORT,
    ACCEPT,
    COMMAND_TYPES,
    CONTINUE,
    DATA,
    DISCARD,
    END_OF_HEADER,
    END_OF_MESSAGE,
    PROGRESS,
    QUIT,
    QUIT_NEW_CONNECTION,
    REJECT,
    REPLY_TYPES,
    SHUTDOWN,
    SKIP,
    TEMPFAIL,
    Abort,
    Accept,
    AddHeader,
    AddRcpt,
    AddRcptWithParameters,
    Body,
    ChangeFrom,
    ChangeHeader,
    Command,
    Connect,
    ConnectionFailure,
    Continue,
    Data,
    DeleteRcpt,
    Discard,
    EndOfHeader,
    EndOfMessage,
    Family,
    Header,
    Helo,
    InsertHeader,
    Macro,
    Mail,
    Message,
    Modification,
    Negotiate,
    NegotiateReply,
    Progress,
    Quarantine,
    Quit,
    QuitNewConnection,
    Rcpt,
    ReceivedMacro,
    Reject,
    ReplaceBody,
    Reply,
    ReplyCode,
    Shutdown,
    Skip,
    TempFail,
    Unknown,
    strip_braces,
    wire_macro_name,
)
from .negotiation import Options, answer_offer, check_reply
from .replycode import ParsedReply, format_reply_text, parse_reply_text, unescape_percent
from .stages import STAGES, Stage
from .state import MilterState, MtaState


def chunk_body(body: bytes, size: int = BODY_CHUNK_SIZE) -> list[bytes]:
    """Split a body into SMFIC_BODY chunks of at most ``size`` bytes (P-BODY-1, P-BODY-6)."""
    if size <= 0 or size > BODY_CHUNK_SIZE:
        raise LocalProtocolError(f"body chunk size must be 1..{BODY_CHUNK_SIZE}", "P-BODY-6")
    view = memoryview(body)
    return [bytes(view[i:i + size]) for i in range(0, len(body), size)]


__all__ = [name for name in dir() if not name.startswith("_")]
