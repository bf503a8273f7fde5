"""Room chat: the first discrete event, length-limited, and rate-limited per user across connections."""

from __future__ import annotations

from typing import Any

from engine.bus.base import Bus
from engine.config import Config
from signaling.channel import Channel, Session
from signaling.protocol import ProtocolError, field


def register_chat(channel: Channel, bus: Bus, config: Config) -> None:
    async def chat(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        text = field(message, "text", str).strip()
        if not text:
            raise ProtocolError("bad_request", "chat text is empty")
        if len(text) > config.chat_max_len:
            raise ProtocolError("too_long", f"chat text is longer than {config.chat_max_len} characters")
        event = await bus.publish(session.room, "chat", {"user": session.sub, "role": session.role, "text": text})
        return {"seq": event.seq}

    channel.actions.register("chat", frozenset({"viewer", "host"}), chat, rate=(config.chat_rate, config.chat_burst),
                             inline=True)
