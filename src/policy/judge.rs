//! The verdict: a pure function of a classified statement, the policy, the
//! session's role and the switch positions.

use std::collections::BTreeMap;

use super::{Policy, UNLISTED_ZONE};
use crate::catalog::flux::{self, Change, FluxName};
use crate::catalog::{self, Catalog, ObjectId};
use crate::classify::{Op, RelationName, Special, StatementInfo, TableAccess};

/// SQLSTATE of every policy rejection: insufficient_privilege, what
/// PostgreSQL itself raises for a write without the privilege.
pub const SQLSTATE_REJECTED: &str = "42501";

/// SQLSTATE of a refusal because a name is in flux (`catalog::flux`):
/// object_in_use, as when DDL holds the object.
pub const SQLSTATE_IN_FLUX: &str = "55006";

/// Who is asking, how the switches stand, and what the names denote.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub role: &'a str,
    pub switches: &'a BTreeMap<String, bool>,
    /// The database's catalog, when the guard has one: names are then
    /// judged as the objects they denote (see `crate::catalog`).
    pub catalog: Option<&'a Catalog>,
    /// The session's search_path, when the server has reported it and
    /// nothing that could have changed it since is still running; None: an
    /// unqualified name counts in every schema that has it.
    pub search_path: Option<&'a [String]>,
    /// Names that DDL the guard let through has changed and the catalog
    /// does not show yet (`catalog::flux`): judged as written too, and, if
    /// they may now reach what the guard cannot see, not written at all.
    pub flux: &'a [FluxName],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(Box<Denial>),
}

/// Why a statement is rejected, in the words the client and the audit log see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// "UPDATE", "DO", "EXECUTE", ...
    pub operation: String,
    /// The relation as PostgreSQL would display it, when there is one.
    pub table: Option<String>,
    pub zone: Option<String>,
    /// The rule that decided: a `[[rules]]` name, "defaults", or a guard
    /// option such as "do_blocks".
    pub rule: String,
    pub sqlstate: &'static str,
    pub message: String,
    pub hint: String,
    /// Only recorded (shadow mode, or a rule with `action = "log"`): the
    /// statement runs, and the audit record says it would have been
    /// rejected.
    pub shadow: bool,
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

/// Resolves a prepared statement's name to the bodies it may hold.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Vec<StatementInfo>;

impl Policy {
    /// Judges one statement. `prepared` resolves `EXECUTE name` to every
    /// body that prepared statement `name` may hold on the server when the
    /// EXECUTE runs (the confirmed one, and any still waiting for the
    /// server's answer): each must be allowed. None: the guard cannot
    /// account for the name, and the EXECUTE is rejected.
    pub fn judge(&self, stmt: &StatementInfo, facts: Facts<'_>, prepared: Lookup<'_>) -> Verdict {
        self.judge_depth(stmt, facts, prepared, 0)
    }

    fn judge_depth(
        &self,
        stmt: &StatementInfo,
        facts: Facts<'_>,
        prepared: Lookup<'_>,
        depth: usize,
    ) -> Verdict {
        // Invariant: a shadowed (only recorded) denial never hides an
        // enforced one: judging goes on past it, and an enforced denial wins.
        let mut worst = Worst::default();
        // A partition or inheritance child being created is in its parents'
        // zone unless listed itself, from this statement on.
        let children: Vec<FluxName>;
        let facts = if stmt.accesses.iter().any(|a| {
            a.op == Op::Ddl
                && (a.operation.ends_with("PARTITION OF") || a.operation.ends_with("INHERITS"))
        }) {
            children = facts
                .flux
                .iter()
                .cloned()
                .chain(
                    flux::changes(stmt)
                        .into_iter()
                        .filter(|f| !f.parents.is_empty()),
                )
                .collect();
            Facts {
                flux: &children,
                ..facts
            }
        } else {
            facts
        };
        for access in &stmt.accesses {
            if let Some(denial) = worst.take(self.judge_access(access, facts, 0)) {
                return Verdict::Deny(Box::new(denial));
            }
        }
        let options = self.options_for(facts.role);
        let shadow = self.shadowed(facts.role, None);
        let optional = |d: Denial| Denial { shadow, ..d };
        for special in &stmt.specials {
            let denial = match special {
                Special::DoBlock if !options.do_blocks => Some(optional(option_denial(
                    "DO",
                    "do_blocks",
                    "DO blocks are not allowed: zoneguard cannot see what they write",
                    "Run the code through a function created by a DBA, or set do_blocks = true for this role in policy.toml.",
                ))),
                Special::Call { routine } if !options.call => Some(optional(option_denial(
                    "CALL",
                    "call",
                    &format!("CALL {routine} is not allowed: zoneguard cannot see what a procedure writes"),
                    "Ask a DBA to allow it with call = true for this role in policy.toml.",
                ))),
                Special::OtherDdl { operation } if !options.other_ddl => Some(optional(option_denial(
                    operation,
                    "other_ddl",
                    &format!("{operation} is not allowed: schema changes outside the policy's zones are off for this role"),
                    "Ask a DBA to run it, or set other_ddl = true for this role in policy.toml.",
                ))),
                Special::ExecutePrepared { name } => match prepared(name) {
                    bodies if !bodies.is_empty() && depth < 4 => {
                        let mut body_worst = Worst::default();
                        bodies
                            .iter()
                            .find_map(|body| match self.judge_depth(body, facts, prepared, depth + 1) {
                                Verdict::Allow => None,
                                Verdict::Deny(d) => body_worst.take(Some(*d)),
                            })
                            .or_else(|| body_worst.finish())
                    }
                    _ => Some(optional(option_denial(
                        "EXECUTE",
                        "prepared_statements",
                        &format!("EXECUTE {name} is not allowed: zoneguard did not see prepared statement \"{name}\" being prepared in this session"),
                        "PREPARE the statement through zoneguard in the same session before executing it.",
                    ))),
                },
                Special::UnreadableSetting { setting, value } => Some(setting_denial(setting, value)),
                Special::DropSchemaCascade { schema } => self.judge_schema_drop(schema, facts),
                Special::Unparsed { may_write: true, reason } => Some(optional(option_denial(
                    &stmt.command,
                    "unparsed",
                    &format!("statement rejected: zoneguard could not tell whether it writes ({reason})"),
                    "zoneguard fails closed on statements it cannot parse. Rewrite the statement in plainer SQL, or run it over a direct connection with a role the DBA trusts.",
                ))),
                _ => None,
            };
            if let Some(d) = worst.take(denial) {
                return Verdict::Deny(Box::new(d));
            }
        }
        match worst.finish() {
            Some(d) => Verdict::Deny(Box::new(d)),
            None => Verdict::Allow,
        }
    }

    /// The rule that decides `op` on `zone` for these facts: the first rule in
    /// file order whose zone, roles and switch positions all match.
    pub fn rule_for(
        &self,
        zone: &str,
        table: &RelationName,
        facts: Facts<'_>,
    ) -> Option<&super::Rule> {
        self.rules.iter().find(|r| {
            r.zone == zone
                && (r.tables.is_empty()
                    || r.tables.iter().any(|t| {
                        t.name == table.name
                            && (t.schema.is_none()
                                || table.schema.is_none()
                                || t.schema == table.schema)
                    }))
                && (r.roles.is_empty() || r.roles.iter().any(|x| x == facts.role))
                && r.when.iter().all(|(sw, pos)| {
                    facts
                        .switches
                        .get(sw)
                        .copied()
                        .or_else(|| self.switches.get(sw).map(|s| s.default))
                        == Some(*pos)
                })
        })
    }

    /// Judges one access: as the objects its name denotes when the catalog
    /// knows the name, else as the name is written; a name in flux both
    /// ways (and a write to one that may reach what the guard cannot see
    /// yet is refused).
    fn judge_access(&self, access: &TableAccess, facts: Facts<'_>, depth: usize) -> Option<Denial> {
        let changed = flux::lookup(facts.flux, &access.table);
        if let Some(d) = changed.and_then(|f| self.flux_denial(access, &access.table, f, facts)) {
            return Some(d);
        }
        let mut candidates = match (facts.catalog, facts.search_path) {
            (Some(c), Some(path)) => c.candidates_on_path(&access.table, path),
            (Some(c), None) => c.candidates(&access.table),
            (None, _) => Vec::new(),
        };
        if let Some(c) = facts.catalog {
            candidates.retain(|&id| denotable(access, c.object(id).kind));
        }
        let mut worst = Worst::default();
        if candidates.is_empty() || changed.is_some() {
            let d = self.judge_as_written(access, changed, facts, depth);
            if let Some(d) = worst.take(d) {
                return Some(d);
            }
        }
        let Some(cat) = facts.catalog else {
            return worst.finish();
        };
        for id in candidates {
            let cascade = access.op == Op::Ddl && access.operation.ends_with("CASCADE");
            for reached in cat.reach_from(id, access.op, cascade, access.only) {
                let object = cat.object(reached);
                if reached != id {
                    if let Some(d) = flux::lookup(facts.flux, &object.name)
                        .and_then(|f| self.flux_denial(access, &object.name, f, facts))
                    {
                        return Some(d);
                    }
                }
                // A write or lock through a view the policy does not list is
                // judged on what the view reads (reached next), not on the
                // view's own `unlisted` zone; a view that reads no relation
                // (its writes go to INSTEAD rules or triggers) is judged as
                // itself.
                let through_view = object.passes_through(access.op)
                    && !object.reads.is_empty()
                    && !self.listed(&object.name);
                let zones = if through_view {
                    Vec::new()
                } else {
                    self.zones_of_object(cat, reached, 0)
                };
                for (zone, decided_by) in zones {
                    let via = (decided_by != reached).then(|| cat.object(decided_by));
                    let owner = via.map_or(&object.name, |o| &o.name);
                    let how = via
                        .map(|o| format!("{} of {} {}", object.kind.noun(), o.kind.noun(), o.name));
                    // The object named is shown as written; one reached
                    // through it, by its qualified name.
                    let shown = if reached == id {
                        &access.table
                    } else {
                        &object.name
                    };
                    let d = self.judge_in_zone(access, shown, how, zone, owner, facts);
                    if let Some(d) = worst.take(d) {
                        return Some(d);
                    }
                }
                // A row written takes its columns' defaults: a default that
                // calls nextval() on another table's sequence burns that
                // table's ids (`CREATE TABLE t (LIKE users INCLUDING
                // DEFAULTS)`).
                if matches!(access.op, Op::Insert | Op::Update) && depth < catalog::MAX_DEPTH {
                    for &seq in &object.uses {
                        let a = TableAccess {
                            op: Op::Insert,
                            table: cat.object(seq).name.clone(),
                            operation: format!(
                                "{} (nextval in a column default)",
                                access.operation
                            ),
                            origin: access.origin,
                            only: false,
                        };
                        if let Some(d) = worst.take(self.judge_access(&a, facts, depth + 1)) {
                            return Some(d);
                        }
                    }
                }
                // A write to a relation with rules also runs their actions.
                if depth < catalog::MAX_DEPTH {
                    for (event, actions) in &object.rules {
                        if *event != access.op {
                            continue;
                        }
                        for a in actions {
                            if let Some(d) = worst.take(self.judge_access(a, facts, depth + 1)) {
                                return Some(d);
                            }
                        }
                    }
                }
            }
        }
        worst.finish()
    }

    /// Judges `access` by its name as written: the zones that name is in, or,
    /// for a partition or inheritance child in flux that no zone lists, its
    /// parents' (as the catalog will place it once re-read).
    fn judge_as_written(
        &self,
        access: &TableAccess,
        changed: Option<&FluxName>,
        facts: Facts<'_>,
        depth: usize,
    ) -> Option<Denial> {
        let mut worst = Worst::default();
        let zones = self.zones_of(&access.table);
        if let Some(f) = changed.filter(|f| !f.parents.is_empty()) {
            if zones == [UNLISTED_ZONE] && depth < catalog::MAX_DEPTH {
                for p in &f.parents {
                    let a = TableAccess {
                        table: p.clone(),
                        ..access.clone()
                    };
                    if let Some(d) = worst.take(self.judge_access(&a, facts, depth + 1)) {
                        return Some(d);
                    }
                }
                return worst.finish();
            }
        }
        for zone in zones {
            let d = self.judge_in_zone(access, &access.table, None, zone, &access.table, facts);
            if let Some(d) = worst.take(d) {
                return Some(d);
            }
        }
        worst.finish()
    }

    /// A write, row lock or function acting on a name that DDL has made
    /// reach what the guard cannot derive (a view, a rule, a rename's
    /// target, ...) is refused until the catalog shows what it reaches.
    fn flux_denial(
        &self,
        access: &TableAccess,
        shown: &RelationName,
        f: &FluxName,
        facts: Facts<'_>,
    ) -> Option<Denial> {
        if f.change != Change::Opaque || matches!(access.op, Op::Read | Op::Ddl | Op::Reference) {
            return None;
        }
        let (message, hint) = if f.own {
            (
                format!(
                    "{} on {shown} is not allowed yet: {} earlier in this session changed what it reaches, and zoneguard judges writes through it once that change has committed and the guard has re-read the catalog",
                    access.operation, f.operation
                ),
                "Commit the DDL first (its own transaction, as migration tools do), then run the statement again.",
            )
        } else {
            (
                format!(
                    "{} on {shown} is not allowed yet: another session's {} that has not committed changes what it reaches",
                    access.operation, f.operation
                ),
                "Run the statement again once that transaction has ended.",
            )
        };
        Some(Denial {
            operation: access.operation.clone(),
            table: Some(shown.to_string()),
            zone: None,
            rule: "catalog_flux".into(),
            sqlstate: SQLSTATE_IN_FLUX,
            message,
            hint: hint.into(),
            shadow: self.shadowed(facts.role, None),
        })
    }

    /// `DROP SCHEMA s CASCADE` drops every relation in `s`: judged as DDL on
    /// each (with what depends on them). Without a catalog the guard cannot
    /// see what the schema holds, and refuses.
    fn judge_schema_drop(&self, schema: &str, facts: Facts<'_>) -> Option<Denial> {
        let Some(cat) = facts.catalog else {
            return Some(Denial {
                shadow: self.shadowed(facts.role, None),
                ..option_denial(
                    "DROP SCHEMA",
                    "catalog",
                    &format!("DROP SCHEMA {schema} CASCADE is not allowed: without the database's catalog zoneguard cannot see which tables it would drop"),
                    "Drop the schema's tables one by one, or check the [catalog] settings in policy.toml (SHOW CATALOGS on the admin console).",
                )
            });
        };
        let mut worst = Worst::default();
        for o in cat
            .objects
            .iter()
            .filter(|o| o.name.schema.as_deref() == Some(schema))
        {
            let access = TableAccess {
                op: Op::Ddl,
                table: o.name.clone(),
                operation: "DROP SCHEMA CASCADE".to_owned(),
                origin: None,
                only: false,
            };
            if let Some(d) = worst.take(self.judge_access(&access, facts, 0)) {
                return Some(d);
            }
        }
        worst.finish()
    }

    /// The zones of a catalog object, each with the object that placed it
    /// there: its own name or schema if the policy lists it, else its
    /// owner's zones (index, sequence, statistics object), else its parents'
    /// (partition, inheritance child), else `unlisted`.
    pub fn zones_of_object<'p>(
        &'p self,
        cat: &Catalog,
        id: ObjectId,
        depth: usize,
    ) -> Vec<(&'p str, ObjectId)> {
        let o = cat.object(id);
        // Zones list relations of their own kind: a `tables` entry never
        // names an index or a sequence (`sequences`, `indexes` do).
        let own = self.zones_of_kind(&o.name, o.kind);
        if own != [UNLISTED_ZONE] || depth >= catalog::MAX_DEPTH {
            return own.into_iter().map(|z| (z, id)).collect();
        }
        if let Some(owner) = o.owner {
            return self.zones_of_object(cat, owner, depth + 1);
        }
        if !o.parents.is_empty() {
            let mut out: Vec<(&str, ObjectId)> = Vec::new();
            for &p in &o.parents {
                for z in self.zones_of_object(cat, p, depth + 1) {
                    if !out.iter().any(|(x, _)| *x == z.0) {
                        out.push(z);
                    }
                }
            }
            return out;
        }
        // A sequence or index with no owner: its schema's zone, if any.
        self.zones_by_schema(&o.name)
            .into_iter()
            .map(|z| (z, id))
            .collect()
    }

    /// Judges `access` on `object` (shown in messages), which is in `zone`
    /// because of `owner` (the relation a rule's `tables` must name).
    fn judge_in_zone(
        &self,
        access: &TableAccess,
        object: &RelationName,
        how: Option<String>,
        zone: &str,
        owner: &RelationName,
        facts: Facts<'_>,
    ) -> Option<Denial> {
        let rule = self.rule_for(zone, owner, facts);
        let (allowed, rule_name, reason, hint) = match rule {
            Some(rule) => (
                rule.allow,
                rule.name.as_str(),
                rule.reason.clone(),
                rule.hint.clone(),
            ),
            None => (self.default_allow, "defaults", None, None),
        };
        if allowed.contains(access.op) {
            return None;
        }
        let words = allowed.words();
        let reason = reason.unwrap_or_else(|| {
            let what = if zone == UNLISTED_ZONE {
                "tables that no zone names".to_string()
            } else {
                format!("{zone} zone")
            };
            match words.as_slice() {
                [] => format!("{what} allows nothing for role \"{}\"", facts.role),
                ["read"] => format!("{what} is read-only"),
                w => format!("{what} allows only {}", w.join(", ")),
            }
        });
        let hint = hint.unwrap_or_else(|| {
            let allows = if words.is_empty() {
                "nothing".to_string()
            } else {
                words.join(", ")
            };
            let mut h = format!(
                "zoneguard rule \"{rule_name}\" allows {allows} on zone \"{zone}\" for role \"{}\".",
                facts.role
            );
            if access.op != Op::Read {
                h.push_str(" Write to a zone that allows it, or ask a DBA to change policy.toml.");
            }
            h
        });
        let shown = match &how {
            Some(how) => format!("{object} ({how})"),
            None => object.to_string(),
        };
        Some(Denial {
            operation: access.operation.clone(),
            table: Some(object.to_string()),
            zone: Some(zone.to_string()),
            rule: rule_name.to_string(),
            sqlstate: SQLSTATE_REJECTED,
            message: format!("{} on {shown} is not allowed: {reason}", access.operation),
            hint,
            shadow: self.shadowed(facts.role, rule),
        })
    }

    /// Judges a fast-path FunctionCall message (a function called by OID,
    /// which no SQL parser can see into).
    pub fn judge_function_call(&self, role: &str) -> Verdict {
        if self.options_for(role).function_calls {
            return Verdict::Allow;
        }
        Verdict::Deny(Box::new(Denial {
            shadow: self.shadowed(role, None),
            ..option_denial(
                "FUNCTION CALL",
                "function_calls",
                "fast-path function calls are not allowed: zoneguard cannot see what a function called by OID writes",
                "Call the function with SELECT instead, or set function_calls = true for this role in policy.toml.",
            )
        }))
    }
}

/// Whether an access can mean an object of this kind: PostgreSQL resolves a
/// name among the relations of the kinds the statement takes (nextval a
/// sequence, DROP INDEX an index, a row written a table or view, an index
/// made on a table), so an object of another kind with that name in some
/// schema is not a candidate. Other DDL (ALTER TABLE takes any relation)
/// keeps every kind.
fn denotable(access: &TableAccess, kind: catalog::Kind) -> bool {
    use catalog::Kind as K;
    let op = access.operation.as_str();
    if op.starts_with("NEXTVAL") || op.starts_with("SETVAL") {
        return kind == K::Sequence;
    }
    if op.starts_with("DROP INDEX") || op == "ALTER INDEX" || op == "REINDEX INDEX" {
        return kind == K::Index;
    }
    if op.starts_with("DROP SEQUENCE") || op == "ALTER SEQUENCE" || op == "CREATE SEQUENCE" {
        return kind == K::Sequence;
    }
    if op.starts_with("DROP STATISTICS") || op == "ALTER STATISTICS" {
        return kind == K::Statistics;
    }
    let row_holder = !matches!(kind, K::Index | K::Sequence | K::Statistics | K::Toast);
    // ALTER TABLE also takes sequences and indexes (RENAME, OWNER, SET
    // SCHEMA): only an unqualified name, which the guard resolves in every
    // schema, is narrowed to the tables it most likely means.
    let alters_unqualified = op.starts_with("ALTER TABLE") && access.table.schema.is_none();
    match access.op {
        Op::Insert | Op::Update | Op::Delete | Op::Truncate | Op::Lock | Op::Reference => {
            row_holder
        }
        _ if matches!(
            op,
            "CREATE INDEX"
                | "CREATE TRIGGER"
                | "CREATE RULE"
                | "CREATE STATISTICS"
                | "CREATE POLICY"
        ) || alters_unqualified =>
        {
            row_holder
        }
        _ => true,
    }
}

/// The denial a judgement ends with: the first enforced one stops it; a
/// shadowed one is kept (the first) while judging goes on.
#[derive(Default)]
struct Worst {
    shadow: Option<Denial>,
}

impl Worst {
    /// Returns the denial if it is enforced (judging stops); keeps the
    /// first shadowed one.
    fn take(&mut self, d: Option<Denial>) -> Option<Denial> {
        match d {
            Some(d) if !d.shadow => Some(d),
            Some(d) => {
                self.shadow.get_or_insert(d);
                None
            }
            None => None,
        }
    }

    fn finish(self) -> Option<Denial> {
        self.shadow
    }
}

/// A statement would set `setting` to a value under which the guard could
/// not read later statements as the server does (`classify::reading`).
fn setting_denial(setting: &str, value: &str) -> Denial {
    let (message, hint) = if setting == "client_encoding" {
        crate::classify::reading::encoding_refusal(value)
    } else {
        (
            format!("SET {setting} = {value} is not allowed: with it, backslashes in strings change where a string ends, and zoneguard could misread later statements"),
            "Keep standard_conforming_strings on (PostgreSQL's default); write escapes as E'...' strings instead.".to_owned(),
        )
    };
    option_denial("SET", "session_settings", &message, &hint)
}

fn option_denial(operation: &str, rule: &str, message: &str, hint: &str) -> Denial {
    Denial {
        operation: operation.to_string(),
        table: None,
        zone: None,
        rule: rule.to_string(),
        sqlstate: SQLSTATE_REJECTED,
        message: message.to_string(),
        hint: hint.to_string(),
        shadow: false,
    }
}
