"""model lifecycle: training metadata, who changed what, every validation report

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("training", sa.JSON(), nullable=True))

    with op.batch_alter_table("model_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("username", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("gate", sa.JSON(), nullable=True))

    op.create_table(
        "model_validations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("username", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("model_validations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_validations_name"), ["name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_validations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_validations_name"))
    op.drop_table("model_validations")

    with op.batch_alter_table("model_events", schema=None) as batch_op:
        batch_op.drop_column("gate")
        batch_op.drop_column("username")
        batch_op.drop_column("host")
        batch_op.drop_column("previous_version")

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("training")
