"""drift summaries: each batch's binned inputs and predicted labels

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("summary", sa.JSON(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_batch_metrics_created_at"), ["created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("batch_metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_metrics_created_at"))
        batch_op.drop_column("summary")
