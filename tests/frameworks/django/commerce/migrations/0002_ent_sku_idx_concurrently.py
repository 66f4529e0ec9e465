"""CREATE INDEX CONCURRENTLY on entitlements.sku.

CONCURRENTLY cannot run in a transaction block, hence atomic = False.
"""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("commerce", "0001_initial")]

    operations = [
        AddIndexConcurrently(
            model_name="entitlement",
            index=models.Index(fields=["sku"], name="ent_sku_idx"),
        ),
    ]
