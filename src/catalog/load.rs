//! Reads one database's catalog over the guard's own upstream connection,
//! in one read-only REPEATABLE READ transaction (so every query sees the
//! same snapshot).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Catalog, Kind, Object, ObjectId};
use crate::classify::{self, Op, RelationName, TableAccess};
use crate::policy::CatalogSettings;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("could not reach the database server: {0}")]
    Connect(#[from] std::io::Error),
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("timed out")]
    Timeout,
}

impl From<crate::upstream::OwnConnectionError> for LoadError {
    fn from(e: crate::upstream::OwnConnectionError) -> Self {
        match e {
            crate::upstream::OwnConnectionError::Connect(e) => LoadError::Connect(e),
            crate::upstream::OwnConnectionError::Postgres(e) => LoadError::Postgres(e),
            crate::upstream::OwnConnectionError::Timeout => LoadError::Timeout,
        }
    }
}

/// Schemas whose relations the guard does not resolve: TOAST tables are
/// never named in SQL. pg_catalog is read: it is searched first, so a name
/// there shadows a user table of the same name (invariant 1).
const SYSTEM_SCHEMAS: &str = "('pg_toast')";

/// The channel an event trigger notifies when DDL ends (see
/// `zoneguard catalog-trigger`): the guard reloads the catalog at once.
pub const NOTIFY_CHANNEL: &str = "zoneguard_catalog";

/// Connects to `database` as the catalog role and reads its catalog.
pub async fn load(
    upstream: &crate::upstream::Upstream,
    settings: &CatalogSettings,
    database: &str,
    timeout: Duration,
) -> Result<Catalog, LoadError> {
    let client = connect(upstream, settings, database, timeout, || {}).await?;
    read_catalog(&client, timeout).await
}

/// Connects as the catalog role and listens on [`NOTIFY_CHANNEL`] (the
/// event trigger of earlier versions), calling `on_notify` for each
/// notification and once more when the connection is lost (notifications
/// sent meanwhile are gone). The connection lives as long as the client.
pub async fn connect(
    upstream: &crate::upstream::Upstream,
    settings: &CatalogSettings,
    database: &str,
    timeout: Duration,
    on_notify: impl Fn() + Send + 'static,
) -> Result<tokio_postgres::Client, LoadError> {
    let login = crate::upstream::Login {
        user: &settings.user,
        password: &settings.password,
        database,
        application_name: "zoneguard catalog",
    };
    let client = upstream
        .own_connection(&login, timeout, move |channel, _| {
            // "": the connection ended (see `Upstream::own_connection`).
            if channel == NOTIFY_CHANNEL || channel.is_empty() {
                on_notify();
            }
        })
        .await?;
    tokio::time::timeout(
        timeout.max(Duration::from_secs(1)) * 2,
        client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")),
    )
    .await
    .map_err(|_| LoadError::Timeout)??;
    Ok(client)
}

/// Reads the catalog over an open connection.
pub async fn read_catalog(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> Result<Catalog, LoadError> {
    let started = Instant::now();
    let mut catalog = tokio::time::timeout(timeout.max(Duration::from_secs(1)) * 6, read(client))
        .await
        .map_err(|_| LoadError::Timeout)??;
    catalog.loaded_in = started.elapsed();
    Ok(catalog)
}

async fn read(client: &tokio_postgres::Client) -> Result<Catalog, LoadError> {
    // An empty search_path makes pg_get_ruledef() qualify every name, so a
    // rule's actions are judged on the objects they were bound to, whatever
    // the session's search_path.
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL search_path = ''",
        )
        .await?;
    let user_schema =
        format!("n.nspname NOT IN {SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'");
    let rels = client
        .query(
            &format!(
                "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {user_schema}"
            ),
            &[],
        )
        .await?;
    let mut objects = Vec::with_capacity(rels.len());
    let mut by_oid: HashMap<i64, ObjectId> = HashMap::with_capacity(rels.len());
    for r in &rels {
        by_oid.insert(r.get(0), objects.len() as ObjectId);
        objects.push(object(r.get(1), r.get(2), Kind::from_relkind(r.get(3))));
    }
    // An index belongs to its table.
    let pairs = |rows: Vec<tokio_postgres::Row>| -> Vec<(ObjectId, ObjectId)> {
        rows.iter()
            .filter_map(|r| Some((*by_oid.get(&r.get(0))?, *by_oid.get(&r.get(1))?)))
            .collect()
    };
    for (index, table) in pairs(
        client
            .query("SELECT indexrelid::int8, indrelid::int8 FROM pg_index", &[])
            .await?,
    ) {
        objects[index as usize].owner = Some(table);
    }
    // A sequence belongs to the table whose column owns it: serial and
    // OWNED BY ('a'), identity ('i').
    for (seq, table) in pairs(
        client
            .query(
                "SELECT objid::int8, refobjid::int8 FROM pg_depend \
                 WHERE classid = 'pg_class'::regclass AND refclassid = 'pg_class'::regclass \
                 AND refobjsubid > 0 AND deptype IN ('a', 'i')",
                &[],
            )
            .await?,
    ) {
        if objects[seq as usize].kind == Kind::Sequence {
            objects[seq as usize].owner = Some(table);
        }
    }
    // Partitions and inheritance children.
    for (child, parent) in pairs(
        client
            .query(
                "SELECT inhrelid::int8, inhparent::int8 FROM pg_inherits",
                &[],
            )
            .await?,
    ) {
        objects[child as usize].parents.push(parent);
        objects[parent as usize].children.push(child);
    }
    // Foreign keys: the referencing table, for TRUNCATE of the referenced.
    for (referencing, referenced) in pairs(
        client
            .query(
                "SELECT conrelid::int8, confrelid::int8 FROM pg_constraint WHERE contype = 'f'",
                &[],
            )
            .await?,
    ) {
        if !objects[referenced as usize]
            .referenced_by
            .contains(&referencing)
        {
            objects[referenced as usize].referenced_by.push(referencing);
        }
    }
    // What a view's query names (its _RETURN rule's dependencies).
    for (view, rel) in pairs(
        client
            .query(
                "SELECT DISTINCT r.ev_class::int8, d.refobjid::int8 \
                 FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass \
                 AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass \
                 AND d.refobjid <> r.ev_class WHERE r.rulename = '_RETURN'",
                &[],
            )
            .await?,
    ) {
        objects[view as usize].reads.push(rel);
        objects[rel as usize].read_by.push(view);
    }
    // Other rules: what their actions do, classified like any statement.
    for r in client
        .query(
            "SELECT ev_class::int8, ev_type::text, pg_get_ruledef(oid) FROM pg_rewrite \
             WHERE rulename <> '_RETURN'",
            &[],
        )
        .await?
    {
        let Some(&rel) = by_oid.get(&r.get::<_, i64>(0)) else {
            continue;
        };
        let event = match r.get::<_, &str>(1) {
            "2" => Op::Update,
            "3" => Op::Insert,
            "4" => Op::Delete,
            _ => continue,
        };
        let def: &str = r.get(2);
        objects[rel as usize].rules.push((event, rule_actions(def)));
    }
    // Extended statistics objects belong to their table.
    let stats = client
        .query(
            &format!(
                "SELECT n.nspname::text, s.stxname::text, s.stxrelid::int8 \
                 FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace \
                 WHERE {user_schema}"
            ),
            &[],
        )
        .await?;
    for r in &stats {
        let mut o = object(r.get(0), r.get(1), Kind::Statistics);
        o.owner = by_oid.get(&r.get::<_, i64>(2)).copied();
        objects.push(o);
    }
    // Column defaults that call nextval() on a sequence another table owns
    // (a table's own serial sequences are in its zone anyway).
    for (table, seq) in pairs(
        client
            .query(
                "SELECT DISTINCT a.adrelid::int8, d.refobjid::int8 FROM pg_attrdef a \
                 JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = a.oid \
                 AND d.refclassid = 'pg_class'::regclass \
                 JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'",
                &[],
            )
            .await?,
    ) {
        if objects[seq as usize].owner != Some(table) {
            objects[table as usize].uses.push(seq);
        }
    }
    let oid: i64 = client
        .query_one(
            "SELECT oid::int8 FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    // The change log's counter, in the same snapshot as the catalog.
    let has_log: bool = client
        .query_one(
            "SELECT to_regclass('zoneguard.catalog_changes') IS NOT NULL \
             AND has_table_privilege('zoneguard.catalog_changes', 'SELECT')",
            &[],
        )
        .await?
        .get(0);
    let changes = if has_log {
        Some(client.query_one(super::CHANGES_SQL, &[]).await?.get(0))
    } else {
        None
    };
    client.batch_execute("COMMIT").await?;
    let mut catalog = Catalog::new(objects);
    catalog.database_oid = oid as u32;
    catalog.changes = changes;
    Ok(catalog)
}

fn object(schema: &str, name: &str, kind: Kind) -> Object {
    Object::new(RelationName::new(Some(schema), name), kind)
}

/// What a rule's actions access, from its definition (`CREATE RULE ... DO
/// [INSTEAD] action`). The rule's own table (the DDL of creating it) is not
/// an access of the actions; a definition the guard cannot read is an
/// access it cannot name, which fails closed when judged.
fn rule_actions(def: &str) -> Vec<TableAccess> {
    let mut out = Vec::new();
    for st in classify::classify(def) {
        if st.specials.iter().any(|s| {
            matches!(
                s,
                classify::Special::Unparsed {
                    may_write: true,
                    ..
                } | classify::Special::DoBlock
                    | classify::Special::Call { .. }
            )
        }) {
            out.push(TableAccess {
                op: Op::Ddl,
                table: RelationName::new(None, "(a rule zoneguard cannot read)"),
                operation: "RULE".to_owned(),
                origin: None,
                only: false,
            });
        }
        out.extend(
            st.accesses
                .into_iter()
                .filter(|a| a.operation != "CREATE RULE"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_actions_are_classified() {
        let a = rule_actions(
            "CREATE RULE r AS ON INSERT TO public.v DO INSTEAD  INSERT INTO public.users (email)\n  VALUES (new.email);",
        );
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].op, Op::Insert);
        assert_eq!(a[0].table, RelationName::new(Some("public"), "users"));
    }
}
