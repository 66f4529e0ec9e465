"""CREATE INDEX CONCURRENTLY on commission_rules

CONCURRENTLY cannot run inside a transaction block, so this revision steps
out of Alembic's migration transaction with autocommit_block().

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_commission_rules_logic",
            "commission_rules",
            ["id"],
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_commission_rules_logic",
            table_name="commission_rules",
            postgresql_concurrently=True,
            if_exists=True,
        )
