"""score_results: the sha256 of each request's inputs, and the inputs when retained

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("score_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inputs_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("inputs", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("score_results", schema=None) as batch_op:
        batch_op.drop_column("inputs")
        batch_op.drop_column("inputs_sha256")
