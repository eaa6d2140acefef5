"""bulk ledger: the input rows each chunk spans

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bulk_chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_row", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_row", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bulk_chunks", schema=None) as batch_op:
        batch_op.drop_column("last_row")
        batch_op.drop_column("first_row")
