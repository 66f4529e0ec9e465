"""Legacy tables (users, transactions) are mapped read-only: managed = False,
so Django never issues DDL for them. The new-zone tables are managed."""
from django.db import models


class User(models.Model):
    id = models.BigAutoField(primary_key=True)
    email = models.TextField(unique=True)
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "users"


class Transaction(models.Model):
    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(User, models.DO_NOTHING, db_column="user_id")
    product_id = models.TextField()
    status = models.TextField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    paid_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = "transactions"


class Entitlement(models.Model):
    # FKs into the legacy zone: the constraint lives on entitlements.
    user = models.ForeignKey(User, models.DO_NOTHING)
    source_trx = models.ForeignKey(Transaction, models.DO_NOTHING, null=True, db_column="source_trx_id")
    sku = models.TextField()
    status = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "entitlements"


class CommissionRule(models.Model):
    logic_json = models.JSONField()

    class Meta:
        db_table = "commission_rules"
        indexes = [models.Index(fields=["logic_json"], name="cr_logic_idx")]  # 0004


class ProductSkuMap(models.Model):
    product_id = models.TextField()
    sku = models.TextField()

    class Meta:
        db_table = "product_sku_map"
