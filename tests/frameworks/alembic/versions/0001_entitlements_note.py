"""entitlements.note + its index, and the product_sku_map table

Only new-zone tables are touched: the proxy lets DDL on these through.

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("entitlements", sa.Column("note", sa.Text(), nullable=True))
    op.create_index("ix_entitlements_note", "entitlements", ["note"])
    op.create_table(
        "product_sku_map",
        sa.Column("id", sa.Integer(), primary_key=True),  # serial
        sa.Column("product_id", sa.Text(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_index("ix_entitlements_note", table_name="entitlements")
    op.drop_column("entitlements", "note")
    op.drop_table("product_sku_map")
