"""resume tokens rotate, expire and can be revoked

Conversations keep the hash of the token the last ``welcome`` replaced (accepted for a
short grace, for a client that never received the new one) and when their tokens were
revoked. Expiry needs no column: a token expires when its conversation has been idle
(``updated_at``) for longer than ``server.resume_token_ttl``.

Revision ID: 0003_resume_tokens
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_resume_tokens"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("resume_prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("resume_prev_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("resume_revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(
            op.f("ix_conversations_resume_prev_hash"), ["resume_prev_hash"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index(op.f("ix_conversations_resume_prev_hash"))
        batch.drop_column("resume_revoked_at")
        batch.drop_column("resume_prev_until")
        batch.drop_column("resume_prev_hash")
