"""The statements of a customer turn's store steps, built once and run with parameters.

Building a statement and computing its cache key costs SQLAlchemy about four times what
running a built one does (83 against 19 µs for a one-row SELECT on SQLite), and a turn
runs about ten. Here each is built at import, with bound parameters where the old ones
held values, so executing it is a lookup in SQLAlchemy's compiled cache and the driver's
call (bench/bench_store.py). Used by bot/store/store.py's ``accept_message``,
``turn_records``, ``record_reply`` and ``next_seq``, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Integer, bindparam, case, insert, select, update

from bot.store.models import Base

CONVERSATIONS = Base.metadata.tables["conversations"]
EVENTS = Base.metadata.tables["events"]
HANDOFFS = Base.metadata.tables["handoffs"]
MESSAGES = Base.metadata.tables["messages"]

_c = CONVERSATIONS.c
_m = MESSAGES.c
_last = _c.last_seq

# A seq reservation: none new while ``last_seq`` is still the top of the block this store
# holds (its seqs are this store's), else ``last_seq + n``. ``top`` is that block's top, or
# -1 when no block can number the write (``last_seq`` is never negative).
RESERVE = case((_last == bindparam("top", type_=Integer), _last), else_=_last + bindparam("n"))

TAKE = (
    update(CONVERSATIONS)
    .where(_c.id == bindparam("cid"))
    .values(last_seq=RESERVE, updated_at=bindparam("now"))
    .returning(_last, _c.status)
)
"""Reserve ``n`` seqs -> (last_seq, status). Parameters: cid, top, n, now."""

TAKE_FOR_REPLY = (
    update(CONVERSATIONS)
    .where(_c.id == bindparam("cid"))
    .values(
        last_seq=RESERVE,
        updated_at=bindparam("now"),
        language=bindparam("language"),
        no_answer_streak=case(
            (bindparam("answered", type_=Boolean), 0), else_=_c.no_answer_streak + 1
        ),
    )
    .returning(_last, _c.status)
)
"""``TAKE`` for a bot reply, which also sets the conversation's language and its streak of
unanswered turns. Parameters: cid, top, n, now, language, answered."""

REOPEN = update(CONVERSATIONS).where(_c.id == bindparam("cid")).values(status="bot")

HAND_OVER = (
    update(CONVERSATIONS)
    .where(_c.id == bindparam("cid"), _c.status == "bot")
    .values(status="queued")
    .returning(_c.id)
)
"""Queue the conversation for a person, only if the bot still has it."""

CONVERSATION = select(CONVERSATIONS).where(_c.id == bindparam("cid"))
STATUS = select(_c.status).where(_c.id == bindparam("cid"))

MESSAGE = select(MESSAGES).where(
    _m.conversation_id == bindparam("cid"), _m.client_id == bindparam("client_id")
)

RECENT = (
    select(_m.id, _m.role, _m.reply_to, _m.faq_ids, _m.original_text, _m.pivot_text)
    .add_columns(_m.delivered_text)
    .where(
        _m.conversation_id == bindparam("cid"),
        _m.role.in_(("customer", "bot")),
        _m.seq < bindparam("before"),
    )
    .order_by(_m.seq.desc())
    .limit(bindparam("limit"))
)
"""The conversation's newest customer and bot messages before a seq, newest first."""

ADD_MESSAGE = insert(MESSAGES)
ADD_MESSAGE_ID = insert(MESSAGES).returning(_m.id)
ADD_EVENT = insert(EVENTS)
ADD_HANDOFF = insert(HANDOFFS)

CLAIM = (
    update(MESSAGES)
    .where(_m.id == bindparam("mid"), _m.replied.is_(False))
    .values(
        language=bindparam("language"),
        pivot_text=bindparam("pivot_text"),
        faq_ids=bindparam("faq_ids"),
        replied=True,
        replied_at=bindparam("now"),
    )
    .returning(_m.id)
)
"""Mark a customer message answered, unless it already is -> its id, or no row."""


def take_params(
    cid: str, n: int, held: tuple[int, int] | None, now: Any, **values: Any
) -> dict[str, Any]:
    """``TAKE``'s (or ``TAKE_FOR_REPLY``'s) parameters: the block ``held`` numbers the write
    when it has ``n`` seqs left and nobody reserved above it (``store._first_seq``)."""
    top = held[1] if held is not None and held[1] - held[0] + 1 >= n else -1
    return {"cid": cid, "top": top, "n": n, "now": now, **values}
