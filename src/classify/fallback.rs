//! Token-level fallback for statements sqlparser cannot parse: recognises a
//! few PostgreSQL commands by their keywords and otherwise reports the
//! statement as unparsed, flagging it as a possible write when any word in it
//! (outside strings and comments) is a write-capable keyword.

use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::walk::{norm_ident, relation_from_parts};
use super::{Op, RelationName, Special, StatementInfo, TableAccess};

/// Words that may make an unparsed statement write or change structure.
const WRITE_WORDS: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "TRUNCATE",
    "COPY",
    "CREATE",
    "ALTER",
    "DROP",
    "GRANT",
    "REVOKE",
    "COMMENT",
    "SECURITY",
    "IMPORT",
    "REFRESH",
    "CLUSTER",
    "REINDEX",
    "VACUUM",
    "DO",
    "CALL",
    "EXECUTE",
    "PREPARE",
    "LOCK",
    "INTO",
    "FOR",
    "REASSIGN",
    "LOAD",
    "RENAME",
    "ATTACH",
    "DETACH",
    "OWNER",
    "UPSERT",
    "REPLACE",
    "NEXTVAL",
    "SETVAL",
    "SET_CONFIG",
    "DBLINK_EXEC",
    "LO_IMPORT",
    "LO_UNLINK",
    "LO_EXPORT",
    "PG_TERMINATE_BACKEND",
    "PG_CANCEL_BACKEND",
    "PG_RELOAD_CONF",
    "STANDARD_CONFORMING_STRINGS",
    "SYSTEM",
];

/// Words allowed after `TABLE name` in the fallback.
const TABLE_TAIL: &[&str] = &[
    "ORDER", "BY", "ASC", "DESC", "NULLS", "FIRST", "LAST", "LIMIT", "ALL", "OFFSET", "ROW",
    "ROWS", "FETCH", "NEXT", "ONLY",
];

/// A word token: its upper-cased value and whether it was quoted.
struct W<'a> {
    upper: String,
    quoted: bool,
    value: &'a str,
}

fn word(t: &Token) -> Option<W<'_>> {
    match t {
        Token::Word(w) => Some(W {
            upper: w.value.to_ascii_uppercase(),
            quoted: w.quote_style.is_some(),
            value: &w.value,
        }),
        _ => None,
    }
}

/// Classify a statement that did not parse.
pub(crate) fn classify_tokens(piece: &[TokenWithSpan], error: &str) -> StatementInfo {
    let toks: Vec<&Token> = piece
        .iter()
        .map(|t| &t.token)
        .filter(|t| super::tokens::significant(t))
        .collect();
    let kw = |i: usize| {
        toks.get(i)
            .and_then(|t| word(t))
            .filter(|w| !w.quoted)
            .map(|w| w.upper)
            .unwrap_or_default()
    };
    let may_write = toks.iter().any(|t| match word(t) {
        Some(w) => WRITE_WORDS.contains(&w.upper.as_str()),
        None => false,
    });
    let first = kw(0);
    let mut info = StatementInfo {
        command: first.clone(),
        ..Default::default()
    };
    let unparsed = |info: &mut StatementInfo, may_write: bool, reason: String| {
        info.specials.push(Special::Unparsed { may_write, reason });
    };
    let ddl = |info: &mut StatementInfo, rel: RelationName, op: &str| {
        info.accesses.push(TableAccess {
            op: Op::Ddl,
            table: rel,
            operation: op.to_owned(),
            origin: None,
            only: false,
        });
    };
    match first.as_str() {
        "DO" => info.specials.push(Special::DoBlock),
        "TABLE" => {
            let mut i = 1;
            if kw(i) == "ONLY" {
                i += 1;
            }
            match qualified_name(&toks, &mut i) {
                Some(rel) => {
                    info.accesses.push(TableAccess {
                        op: Op::Read,
                        table: rel,
                        operation: "SELECT".to_owned(),
                        origin: None,
                        only: false,
                    });
                    // Only ORDER BY / LIMIT / OFFSET / FETCH may follow.
                    let plain = toks[i..].iter().all(|t| match word(t) {
                        Some(w) => !w.quoted && TABLE_TAIL.contains(&w.upper.as_str()),
                        None => {
                            matches!(t, Token::Number(..) | Token::Comma | Token::Placeholder(_))
                        }
                    });
                    if !plain || may_write {
                        unparsed(
                            &mut info,
                            may_write,
                            format!("TABLE with other clauses: {error}"),
                        );
                    }
                }
                None => unparsed(&mut info, true, error.to_owned()),
            }
        }
        "CHECKPOINT" if !may_write => {}
        // The cursor is the last word (`MOVE [direction] [FROM | IN] c`).
        "FETCH" | "MOVE" if !may_write => {
            info.cursor = toks.last().and_then(|t| word(t)).map(|w| {
                super::CursorOp::Fetch(if w.quoted {
                    w.value.to_owned()
                } else {
                    w.value.to_lowercase()
                })
            });
        }
        // Two-phase commit: writes nothing of its own (the transaction's
        // statements were judged when they were sent).
        "PREPARE" | "COMMIT" | "ROLLBACK"
            if kw(1)
                == if first == "PREPARE" {
                    "TRANSACTION"
                } else {
                    "PREPARED"
                }
                && toks.len() == 3
                && matches!(toks[2], Token::SingleQuotedString(_)) =>
        {
            info.command = format!("{first} {}", kw(1));
        }
        // Roles: no SQL can hide in their options; the policy decides.
        "CREATE" if matches!(kw(1).as_str(), "USER" | "ROLE" | "GROUP") => {
            let operation = format!("CREATE {}", kw(1));
            info.command = operation.clone();
            info.specials.push(Special::OtherDdl { operation });
        }
        "VACUUM" => {
            let mut i = 1;
            let mut full = false;
            if matches!(toks.get(i), Some(Token::LParen)) {
                while i < toks.len() && !matches!(toks[i], Token::RParen) {
                    if kw(i) == "FULL" {
                        let arg = kw(i + 1);
                        let off = matches!(arg.as_str(), "FALSE" | "OFF")
                            || matches!(toks.get(i + 1), Some(Token::Number(n, _)) if n == "0");
                        full |= !off;
                    }
                    i += 1;
                }
                i += 1;
            }
            while matches!(
                kw(i).as_str(),
                "FULL" | "FREEZE" | "VERBOSE" | "ANALYZE" | "ANALYSE"
            ) {
                full |= kw(i) == "FULL";
                i += 1;
            }
            let names = name_list(&toks, &mut i);
            if full {
                if names.is_empty() {
                    unparsed(
                        &mut info,
                        true,
                        "VACUUM FULL of the whole database".to_owned(),
                    );
                }
                for n in names {
                    ddl(&mut info, n, "VACUUM FULL");
                }
            }
            if i < toks.len() {
                unparsed(&mut info, may_write, error.to_owned());
            }
        }
        "CLUSTER" => {
            let mut i = 1;
            skip_options(&toks, &mut i, &["VERBOSE"]);
            let names = name_list(&toks, &mut i);
            let mut rels = names;
            if kw(i) == "ON" || kw(i) == "USING" {
                // CLUSTER index ON table (old form) / CLUSTER table USING index
                i += 1;
                rels.extend(qualified_name(&toks, &mut i));
            }
            if rels.is_empty() {
                unparsed(&mut info, true, "CLUSTER of the whole database".to_owned());
            }
            for r in rels {
                ddl(&mut info, r, "CLUSTER");
            }
            if i < toks.len() {
                unparsed(&mut info, true, error.to_owned());
            }
        }
        "REINDEX" => {
            let mut i = 1;
            skip_options(&toks, &mut i, &["VERBOSE"]);
            let kind = kw(i);
            i += 1;
            if kw(i) == "CONCURRENTLY" {
                i += 1;
            }
            match (kind.as_str(), qualified_name(&toks, &mut i)) {
                ("TABLE" | "INDEX", Some(rel)) if i == toks.len() => ddl(&mut info, rel, "REINDEX"),
                _ => unparsed(&mut info, true, format!("REINDEX {kind} cannot be judged")),
            }
        }
        "ALTER" if matches!(kw(1).as_str(), "SEQUENCE" | "INDEX") => {
            let op = format!("ALTER {}", kw(1));
            info.command = op.clone();
            let mut i = 2;
            if kw(i) == "IF" && kw(i + 1) == "EXISTS" {
                i += 2;
            }
            match qualified_name(&toks, &mut i) {
                Some(rel) => ddl(&mut info, rel, &op),
                None => unparsed(&mut info, true, error.to_owned()),
            }
            // OWNED BY table.column makes the sequence part of that table.
            let mut rest: Vec<&Token> = Vec::new();
            let mut j = i;
            while j < toks.len() {
                if kw(j) == "OWNED" && kw(j + 1) == "BY" {
                    j += 2;
                    if kw(j) == "NONE" {
                        j += 1;
                        continue;
                    }
                    let mut k = j;
                    let column = dotted(&toks, &mut k);
                    match column.len().checked_sub(1).and_then(|n| {
                        (column.len() <= 4)
                            .then(|| relation_from_parts(&column[..n]))
                            .flatten()
                    }) {
                        Some(rel) => ddl(&mut info, rel, &format!("{op} OWNED BY")),
                        None => unparsed(&mut info, true, "OWNED BY target not understood".into()),
                    }
                    j = k.max(j + 1);
                    continue;
                }
                rest.push(toks[j]);
                j += 1;
            }
            // Anything else it touches (ATTACH PARTITION, ...) is unknown.
            let attach = rest
                .iter()
                .any(|t| word(t).is_some_and(|w| !w.quoted && w.upper == "ATTACH"));
            if rest.iter().any(|t| matches!(t, Token::Period)) || attach {
                unparsed(&mut info, true, format!("{op} clauses not understood"));
            }
        }
        // Extended statistics live in a namespace of their own; the catalog
        // (if any) resolves a name to the table they belong to.
        "CREATE" | "ALTER" | "DROP" if kw(1) == "STATISTICS" => {
            let op = format!("{first} STATISTICS");
            info.command = op.clone();
            let mut i = 2;
            if kw(i) == "IF" && matches!(kw(i + 1).as_str(), "EXISTS" | "NOT") {
                i += if kw(i + 1) == "NOT" { 3 } else { 2 };
            }
            if first == "CREATE" {
                // CREATE STATISTICS [name] [(kinds)] ON exprs FROM table
                let from = (i..toks.len()).find(|&k| kw(k) == "FROM");
                let mut k = from.map_or(toks.len(), |f| f + 1);
                match qualified_name(&toks, &mut k) {
                    Some(rel) if k == toks.len() => ddl(&mut info, rel, &op),
                    _ => unparsed(&mut info, true, format!("{op} not understood")),
                }
            } else {
                let names = name_list(&toks, &mut i);
                for n in names.iter().cloned() {
                    ddl(&mut info, n, &op);
                }
                let tail_ok = first == "DROP"
                    && toks[i..].iter().all(|t| {
                        word(t).is_some_and(|w| {
                            !w.quoted && (w.upper == "CASCADE" || w.upper == "RESTRICT")
                        })
                    });
                let alter_ok = first == "ALTER"
                    && names.len() == 1
                    && !toks[i..].iter().any(|t| matches!(t, Token::Period))
                    && !may_write_beyond(&toks[i..]);
                if names.is_empty() || !(tail_ok || alter_ok) {
                    unparsed(&mut info, true, format!("{op} not understood"));
                }
            }
        }
        _ => {
            info.command = "UNKNOWN".to_owned();
            unparsed(&mut info, may_write, error.to_owned());
        }
    }
    info
}

/// `a.b.c`: the normalised parts of a dotted name (empty if none here).
fn dotted(toks: &[&Token], i: &mut usize) -> Vec<String> {
    let mut parts = Vec::new();
    while let Some(w) = toks.get(*i).and_then(|t| word(t)) {
        parts.push(norm_ident(w.value, w.quoted));
        *i += 1;
        if matches!(toks.get(*i), Some(Token::Period)) {
            *i += 1;
        } else {
            break;
        }
    }
    parts
}

/// ALTER STATISTICS name { RENAME TO x | SET SCHEMA x | OWNER TO x | SET
/// STATISTICS n }: anything else is not understood.
fn may_write_beyond(toks: &[&Token]) -> bool {
    !toks.iter().all(|t| match word(t) {
        Some(w) => {
            w.quoted
                || matches!(
                    w.upper.as_str(),
                    "RENAME"
                        | "TO"
                        | "SET"
                        | "SCHEMA"
                        | "OWNER"
                        | "STATISTICS"
                        | "CURRENT_USER"
                        | "SESSION_USER"
                        | "CURRENT_ROLE"
                        | "DEFAULT"
                )
                || !WRITE_WORDS.contains(&w.upper.as_str())
        }
        None => matches!(t, Token::Number(..) | Token::Minus),
    })
}

/// Skip `(option, ...)` and bare option words.
fn skip_options(toks: &[&Token], i: &mut usize, bare: &[&str]) {
    if matches!(toks.get(*i), Some(Token::LParen)) {
        while *i < toks.len() && !matches!(toks[*i], Token::RParen) {
            *i += 1;
        }
        *i += 1;
    }
    while toks
        .get(*i)
        .and_then(|t| word(t))
        .is_some_and(|w| !w.quoted && bare.contains(&w.upper.as_str()))
    {
        *i += 1;
    }
}

/// `name [(columns)] [, ...]`
fn name_list(toks: &[&Token], i: &mut usize) -> Vec<RelationName> {
    let mut out = Vec::new();
    while let Some(rel) = qualified_name(toks, i) {
        out.push(rel);
        if matches!(toks.get(*i), Some(Token::LParen)) {
            while *i < toks.len() && !matches!(toks[*i], Token::RParen) {
                *i += 1;
            }
            *i += 1;
        }
        if matches!(toks.get(*i), Some(Token::Comma)) {
            *i += 1;
        } else {
            break;
        }
    }
    out
}

/// `[db.][schema.]name`; `None` (and `i` unchanged) if there is no name here.
fn qualified_name(toks: &[&Token], i: &mut usize) -> Option<RelationName> {
    let mut parts = Vec::new();
    let mut j = *i;
    loop {
        let w = toks.get(j).and_then(|t| word(t))?;
        if !w.quoted
            && matches!(
                w.upper.as_str(),
                "ON" | "USING" | "ORDER" | "LIMIT" | "OFFSET" | "FETCH"
            )
        {
            return None;
        }
        parts.push(norm_ident(w.value, w.quoted));
        j += 1;
        if matches!(toks.get(j), Some(Token::Period)) {
            j += 1;
        } else {
            break;
        }
    }
    if parts.len() > 3 {
        return None;
    }
    let rel = relation_from_parts(&parts)?;
    *i = j;
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb(sql: &str) -> StatementInfo {
        classify_tokens(&super::super::tokens::tokenize(sql).unwrap(), "parse error")
    }

    fn may_write(info: &StatementInfo) -> Option<bool> {
        info.specials.iter().find_map(|s| match s {
            Special::Unparsed { may_write, .. } => Some(*may_write),
            _ => None,
        })
    }

    #[test]
    fn table_form() {
        let info = fb("TABLE users LIMIT 5");
        assert_eq!(info.accesses[0].table, RelationName::new(None, "users"));
        assert!(info.specials.is_empty());
        let info = fb("TABLE users JOIN x ON true");
        assert_eq!(info.accesses.len(), 1);
        assert_eq!(may_write(&info), Some(false));
        assert_eq!(may_write(&fb("TABLE users; DELETE")), Some(true));
    }

    #[test]
    fn write_words_outside_strings_only() {
        assert_eq!(may_write(&fb("FOO 'DELETE' /* DROP */ $$x$$")), Some(false));
        assert_eq!(may_write(&fb("FOO delete")), Some(true));
        assert_eq!(may_write(&fb(r#"FOO "drop""#)), Some(true));
        assert_eq!(fb("FOO BAR").command, "UNKNOWN");
    }

    #[test]
    fn vacuum_cluster_reindex() {
        assert_eq!(
            fb("VACUUM (FULL) users").accesses[0].operation,
            "VACUUM FULL"
        );
        assert!(fb("VACUUM (VERBOSE) users").accesses.is_empty());
        assert_eq!(may_write(&fb("VACUUM (FULL)")), Some(true));
        assert_eq!(fb("CLUSTER users_idx ON users").accesses.len(), 2);
        assert_eq!(may_write(&fb("REINDEX SYSTEM app")), Some(true));
        assert_eq!(fb("REINDEX (VERBOSE) TABLE users").accesses.len(), 1);
    }
}
