"""bulk ledger: the chunks a run published, each result's chunk, the input's identity

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bulk_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("input_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("options", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("chunks", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("score_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bulk_chunk", sa.Integer(), nullable=True))
    with op.batch_alter_table("bulk_duplicates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chunk", sa.Integer(), nullable=True))
    op.create_table(
        "bulk_chunks",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("republished", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("bulk_chunks")
    with op.batch_alter_table("bulk_duplicates", schema=None) as batch_op:
        batch_op.drop_column("chunk")
    with op.batch_alter_table("score_results", schema=None) as batch_op:
        batch_op.drop_column("bulk_chunk")
    with op.batch_alter_table("bulk_runs", schema=None) as batch_op:
        batch_op.drop_column("chunks")
        batch_op.drop_column("options")
        batch_op.drop_column("input_sha256")
        batch_op.drop_column("input_bytes")
