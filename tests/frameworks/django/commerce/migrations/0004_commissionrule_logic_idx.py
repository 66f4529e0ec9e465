"""A plain (transactional) index on commission_rules; migrating back to zero
undoes it with DROP INDEX by name."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("commerce", "0003_remove_ent_sku_idx_concurrently")]

    operations = [
        migrations.AddIndex(
            model_name="commissionrule",
            index=models.Index(fields=["logic_json"], name="cr_logic_idx"),
        ),
    ]
