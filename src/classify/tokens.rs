//! Token-level preparation: tokenising (with COPY payloads re-read as SQL),
//! the PostgreSQL-only rewrites that make statements parseable, and
//! splitting a string into statements at top-level semicolons.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer, Whitespace, Word};

/// How many nested `COPY ... FROM STDIN;` payloads are re-read before giving up.
const MAX_COPY_DEPTH: usize = 8;

/// Tokenise `sql` with the PostgreSQL dialect.
///
/// sqlparser treats the lines after `COPY t FROM STDIN;` as a data payload.
/// PostgreSQL does not (the data travels in CopyData messages), so it would
/// run SQL hidden there: the payload is tokenised again as SQL.
pub(crate) fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, String> {
    tokenize_depth(sql, 0)
}

fn tokenize_depth(sql: &str, depth: usize) -> Result<Vec<TokenWithSpan>, String> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| e.to_string())?;
    if !tokens
        .iter()
        .any(|t| matches!(t.token, Token::CopyData { .. }))
    {
        return Ok(tokens);
    }
    if depth >= MAX_COPY_DEPTH {
        return Err("too many nested COPY FROM STDIN payloads".to_owned());
    }
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        let Token::CopyData { data, .. } = &t.token else {
            out.push(t);
            continue;
        };
        let start = t.span.start;
        for mut inner in tokenize_depth(data, depth + 1)? {
            inner.span = Span::new(shift(inner.span.start, start), shift(inner.span.end, start));
            out.push(inner);
        }
    }
    // The payload token comes before the `;` that precedes it in the text.
    out.sort_by_key(|t| (t.span.start.line, t.span.start.column));
    Ok(out)
}

fn shift(l: Location, base: Location) -> Location {
    if l.line == 1 {
        Location::new(base.line, l.column + base.column - 1)
    } else {
        Location::new(l.line + base.line - 1, l.column)
    }
}

/// Tokens that carry meaning (not whitespace, comments, EOF or `;`).
pub(crate) fn significant(t: &Token) -> bool {
    !matches!(t, Token::Whitespace(_) | Token::EOF | Token::SemiColon)
}

fn blank(t: &mut TokenWithSpan) {
    t.token = Token::Whitespace(Whitespace::Space);
}

fn is_word(t: &Token, kw: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

/// Rewrite valid PostgreSQL that sqlparser cannot parse into an equivalent
/// form that touches the same relations the same way:
/// `FOR NO KEY UPDATE` -> `FOR UPDATE`, `FOR KEY SHARE` -> `FOR SHARE`,
/// `WHERE CURRENT OF cursor` -> `WHERE true`,
/// `DROP INDEX CONCURRENTLY` -> `DROP INDEX` (the same index goes, only the
/// lock differs), `FOR READ ONLY` -> nothing (PostgreSQL's grammar drops it
/// too), `COLLATION FOR (x)` -> `pg_collation_for(x)` (what the grammar turns
/// it into).
pub(crate) fn rewrite(tokens: &mut [TokenWithSpan]) {
    let idx: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let at = |tokens: &[TokenWithSpan], k: usize, kw: &str| {
        idx.get(k).is_some_and(|&i| is_word(&tokens[i].token, kw))
    };
    for k in 0..idx.len() {
        if at(tokens, k, "FOR")
            && at(tokens, k + 1, "NO")
            && at(tokens, k + 2, "KEY")
            && at(tokens, k + 3, "UPDATE")
        {
            blank(&mut tokens[idx[k + 1]]);
            blank(&mut tokens[idx[k + 2]]);
        } else if at(tokens, k, "FOR") && at(tokens, k + 1, "KEY") && at(tokens, k + 2, "SHARE") {
            blank(&mut tokens[idx[k + 1]]);
        } else if at(tokens, k, "WHERE")
            && at(tokens, k + 1, "CURRENT")
            && at(tokens, k + 2, "OF")
            && idx
                .get(k + 3)
                .is_some_and(|&i| matches!(tokens[i].token, Token::Word(_)))
        {
            tokens[idx[k + 1]].token = Token::Word(Word {
                value: "true".to_owned(),
                quote_style: None,
                keyword: Keyword::TRUE,
            });
            blank(&mut tokens[idx[k + 2]]);
            blank(&mut tokens[idx[k + 3]]);
        } else if at(tokens, k, "DROP")
            && at(tokens, k + 1, "INDEX")
            && at(tokens, k + 2, "CONCURRENTLY")
        {
            blank(&mut tokens[idx[k + 2]]);
        } else if at(tokens, k, "FOR") && at(tokens, k + 1, "READ") && at(tokens, k + 2, "ONLY") {
            for j in k..k + 3 {
                blank(&mut tokens[idx[j]]);
            }
        } else if at(tokens, k, "COLLATION")
            && at(tokens, k + 1, "FOR")
            && idx
                .get(k + 2)
                .is_some_and(|&i| matches!(tokens[i].token, Token::LParen))
        {
            tokens[idx[k]].token = Token::Word(Word {
                value: "pg_collation_for".to_owned(),
                quote_style: None,
                keyword: Keyword::NoKeyword,
            });
            blank(&mut tokens[idx[k + 1]]);
        }
    }
}

/// Rewrite the `TABLE name` query form, which sqlparser only accepts in a
/// few places, to the equivalent `SELECT * FROM name` where it starts a
/// query (statement start, after `(` or a set operator). Returns whether
/// anything changed.
pub(crate) fn rewrite_table_queries(tokens: &mut Vec<TokenWithSpan>) -> bool {
    let mut out = Vec::with_capacity(tokens.len() + 4);
    let mut prev: Option<Token> = None;
    let mut changed = false;
    for t in tokens.drain(..) {
        let starts_query = match &prev {
            None | Some(Token::LParen) => true,
            Some(p) => ["UNION", "EXCEPT", "INTERSECT", "ALL", "DISTINCT"]
                .iter()
                .any(|k| is_word(p, k)),
        };
        if starts_query && is_word(&t.token, "TABLE") {
            let span = t.span;
            let word = |v: &str, k: Keyword| {
                Token::Word(Word {
                    value: v.to_owned(),
                    quote_style: None,
                    keyword: k,
                })
            };
            for tok in [
                word("SELECT", Keyword::SELECT),
                Token::Whitespace(Whitespace::Space),
                Token::Mul,
                Token::Whitespace(Whitespace::Space),
                word("FROM", Keyword::FROM),
            ] {
                out.push(TokenWithSpan::new(tok, span));
            }
            prev = Some(word("FROM", Keyword::FROM));
            changed = true;
            continue;
        }
        if !matches!(t.token, Token::Whitespace(_)) {
            prev = Some(t.token.clone());
        }
        out.push(t);
    }
    *tokens = out;
    changed
}

/// `U&"..."` identifiers (Unicode escapes) are not understood by the
/// tokenizer, which reads them as `U & "..."`.
pub(crate) fn has_unicode_ident(tokens: &[TokenWithSpan]) -> bool {
    tokens.windows(3).any(|w| {
        matches!(&w[0].token, Token::Word(u) if u.quote_style.is_none() && u.value.eq_ignore_ascii_case("u"))
            && matches!(w[1].token, Token::Ampersand)
            && matches!(&w[2].token, Token::Word(q) if q.quote_style == Some('"'))
            && w[0].span.end == w[1].span.start
            && w[1].span.end == w[2].span.start
    })
}

/// Split into statements at semicolons outside parentheses; statements with
/// no significant token are dropped.
pub(crate) fn split(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut depth = 0usize;
    for t in tokens {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::SemiColon if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(t);
    }
    out.push(cur);
    out.retain(|p| p.iter().any(|t| significant(&t.token)));
    out
}

/// A bound on how deep the syntax tree can be: the most tokens on one path
/// of parenthesis levels, counting at each level the tokens since the last
/// comma, plus every set operator (UNION, INTERSECT, EXCEPT) at that level.
/// Left-associative chains (`a OR b OR ...`, `x UNION y ...`) are parsed in
/// a loop, so the parser's recursion limit does not bound them; walking or
/// dropping their trees recurses once per link.
///
/// Invariant: the tree's depth is at most this bound. A comma ends an
/// expression (a select-list item, an argument, a row), so the run of
/// tokens restarts there; but the arms of a set operation hold commas of
/// their own (`SELECT 1, 2 UNION ALL SELECT 3, 4 ...`), and the chain of
/// set operations goes on across them, so set operators are counted apart
/// and never reset by a comma (a 640 KB chain of 20,000 UNIONs, each arm
/// with commas, once overflowed a worker's stack).
pub(crate) fn depth_bound(tokens: &[TokenWithSpan]) -> usize {
    // Per parenthesis level: tokens since the last comma, set operators.
    let mut runs: Vec<(usize, usize)> = vec![(0, 0)];
    let mut total = 0usize;
    let mut best = 0usize;
    for t in tokens {
        let top = runs.len() - 1;
        match &t.token {
            Token::LParen | Token::LBracket => {
                runs[top].0 += 1;
                total += 1;
                runs.push((0, 0));
            }
            Token::RParen | Token::RBracket => {
                if top > 0 {
                    let (run, sets) = runs.pop().expect("top > 0");
                    total -= run + sets;
                }
            }
            Token::Comma | Token::SemiColon => {
                total -= runs[top].0;
                runs[top].0 = 0;
                if matches!(t.token, Token::SemiColon) {
                    total -= runs[top].1;
                    runs[top].1 = 0;
                }
            }
            Token::Whitespace(_) => {}
            Token::Word(w)
                if matches!(
                    w.keyword,
                    Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT
                ) =>
            {
                runs[top].1 += 1;
                total += 1;
            }
            _ => {
                runs[top].0 += 1;
                total += 1;
            }
        }
        best = best.max(total);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(tokens: &[TokenWithSpan]) -> Vec<String> {
        tokens
            .iter()
            .filter(|t| significant(&t.token))
            .map(|t| t.token.to_string())
            .collect()
    }

    #[test]
    fn copy_payload_is_read_as_sql() {
        let t = tokenize("COPY t FROM STDIN; SELECT 1;\nDELETE FROM users;\n").unwrap();
        assert_eq!(
            words(&t),
            ["COPY", "t", "FROM", "STDIN", "SELECT", "1", "DELETE", "FROM", "users"]
        );
        let pieces = split(t);
        assert_eq!(pieces.len(), 3);
    }

    #[test]
    fn rewrites_lock_strengths_and_current_of() {
        let mut t =
            tokenize("SELECT 1 FROM t FOR NO KEY UPDATE; SELECT 1 FROM t FOR KEY SHARE").unwrap();
        rewrite(&mut t);
        assert_eq!(
            words(&t),
            [
                "SELECT", "1", "FROM", "t", "FOR", "UPDATE", "SELECT", "1", "FROM", "t", "FOR",
                "SHARE"
            ]
        );
        let mut t = tokenize("DELETE FROM t WHERE CURRENT OF c").unwrap();
        rewrite(&mut t);
        assert_eq!(words(&t), ["DELETE", "FROM", "t", "WHERE", "true"]);
    }

    #[test]
    fn split_respects_parens_strings_and_comments() {
        let t = tokenize("SELECT ';'; /* ; */ SELECT (1); ;; -- ;\n").unwrap();
        assert_eq!(split(t).len(), 2);
        let t = tokenize(
            "CREATE RULE r AS ON INSERT TO t DO (INSERT INTO a VALUES (1); DELETE FROM b)",
        )
        .unwrap();
        assert_eq!(split(t).len(), 1);
    }

    #[test]
    fn unicode_identifier_detected() {
        assert!(has_unicode_ident(
            &tokenize(r#"SELECT * FROM U&"\0075sers""#).unwrap()
        ));
        assert!(!has_unicode_ident(
            &tokenize(r#"SELECT u & "x" FROM t"#).unwrap()
        ));
    }

    #[test]
    fn depth_bound_counts_chains() {
        assert_eq!(depth_bound(&tokenize("SELECT a, b").unwrap()), 2);
        assert_eq!(depth_bound(&tokenize("SELECT 1+1+1").unwrap()), 6);
        assert_eq!(depth_bound(&tokenize("SELECT (a+b), (c)").unwrap()), 5);
        assert_eq!(depth_bound(&tokenize("SELECT f(a+a+a, b) + g").unwrap()), 8);
        // Set operations chain across the commas of their arms.
        let chain = (0..500)
            .map(|i| format!("SELECT {i}, 'a', 'b'"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        assert!(depth_bound(&tokenize(&chain).unwrap()) >= 499);
        // ... but not across statements.
        let two = "SELECT 1 UNION SELECT 2; SELECT 3 UNION SELECT 4";
        assert!(depth_bound(&tokenize(two).unwrap()) <= 6);
    }
}
