"""DROP INDEX CONCURRENTLY of the index 0002 made (also non-atomic)."""
from django.contrib.postgres.operations import RemoveIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("commerce", "0002_ent_sku_idx_concurrently")]

    operations = [
        RemoveIndexConcurrently(model_name="entitlement", name="ent_sku_idx"),
    ]
