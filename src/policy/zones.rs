//! Which zone a relation belongs to: exact table names, name patterns and
//! whole schemas, with a fixed precedence.
//!
//! Precedence, for a relation `schema.name`: a zone that lists the table by
//! name (`"users"` or `"legacy.users"`) wins; else a zone with a pattern that
//! matches it (`"django_*"`); else a zone that holds its whole schema
//! (`schemas = ["legacy"]`); else the pseudo-zone `unlisted`. Validation
//! keeps each level unambiguous: a name is listed in one zone, two zones'
//! patterns never match the same name, a schema belongs to one zone.
//!
//! An unqualified name (no catalog to resolve it) may land in any schema on
//! the session's search_path, so it belongs to every zone it would belong to
//! in some schema: the schemas the policy names, and any other.

use super::{Policy, Zone, UNLISTED_ZONE};
use crate::classify::RelationName;

impl Policy {
    /// The zones a relation may be, as named in a statement (see the module
    /// documentation). Never empty: no match is [`UNLISTED_ZONE`].
    pub fn zones_of(&self, rel: &RelationName) -> Vec<&str> {
        let mut out = Vec::new();
        match &rel.schema {
            Some(s) => self.zones_in(Some(s), &rel.name, &mut out),
            None => {
                // Every schema the policy names, and one it does not.
                self.zones_in(None, &rel.name, &mut out);
                for s in self.named_schemas() {
                    self.zones_in(Some(s), &rel.name, &mut out);
                }
            }
        }
        out
    }

    /// The zones of a relation of a known kind, by its own name only:
    /// `tables` entries and patterns for tables, views and the like, the
    /// `sequences` or `indexes` key for those, nothing for statistics
    /// objects; then schemas (for sequences and indexes only after their
    /// owner, which the caller tries first: see `zones_of_object`).
    pub fn zones_of_kind(&self, rel: &RelationName, kind: crate::catalog::Kind) -> Vec<&str> {
        use crate::catalog::Kind;
        let own = |list: &dyn Fn(&Zone) -> &Vec<RelationName>| -> Vec<&str> {
            self.zones
                .iter()
                .filter(|z| {
                    list(z).iter().any(|t| {
                        t.name == rel.name
                            && (t.schema.is_none()
                                || rel.schema.is_none()
                                || t.schema == rel.schema)
                    })
                })
                .map(|z| z.name.as_str())
                .collect()
        };
        let found = match kind {
            Kind::Sequence => own(&|z| &z.sequences),
            Kind::Index => own(&|z| &z.indexes),
            Kind::Statistics => Vec::new(),
            _ => return self.zones_of(rel),
        };
        if found.is_empty() {
            vec![UNLISTED_ZONE]
        } else {
            found
        }
    }

    /// The zones a relation is in by its schema alone.
    pub fn zones_by_schema(&self, rel: &RelationName) -> Vec<&str> {
        let v: Vec<&str> = self
            .zones
            .iter()
            .filter(|z| rel.schema.as_ref().is_some_and(|s| z.schemas.contains(s)))
            .map(|z| z.name.as_str())
            .collect();
        if v.is_empty() {
            vec![UNLISTED_ZONE]
        } else {
            v
        }
    }

    /// The zones of `schema.name` (`schema` None: a schema the policy does
    /// not name), added to `out` without repeats. A name as written may be
    /// of any kind: a sequence or index listed under its own key counts.
    fn zones_in<'a>(&'a self, schema: Option<&str>, name: &str, out: &mut Vec<&'a str>) {
        let entry_matches = |t: &RelationName, glob: bool| {
            let name_ok = if glob {
                glob_match(&t.name, name)
            } else {
                t.name == name
            };
            name_ok && (t.schema.is_none() || t.schema.as_deref() == schema)
        };
        let levels: [&dyn Fn(&Zone) -> bool; 3] = [
            &|z: &Zone| {
                z.tables
                    .iter()
                    .chain(&z.sequences)
                    .chain(&z.indexes)
                    .any(|t| entry_matches(t, false))
            },
            &|z: &Zone| z.patterns.iter().any(|t| entry_matches(t, true)),
            &|z: &Zone| schema.is_some_and(|s| z.schemas.iter().any(|x| x == s)),
        ];
        for level in levels {
            let mut hit = false;
            for z in self.zones.iter().filter(|z| level(z)) {
                hit = true;
                if !out.contains(&z.name.as_str()) {
                    out.push(&z.name);
                }
            }
            if hit {
                return;
            }
        }
        if !out.contains(&UNLISTED_ZONE) {
            out.push(UNLISTED_ZONE);
        }
    }

    /// Whether the policy places `rel` in a zone by its own name or schema
    /// (not by falling into `unlisted`).
    pub fn listed(&self, rel: &RelationName) -> bool {
        self.zones_of(rel) != [UNLISTED_ZONE]
    }

    fn named_schemas(&self) -> impl Iterator<Item = &str> {
        let mut v: Vec<&str> = self
            .zones
            .iter()
            .flat_map(|z| {
                z.tables
                    .iter()
                    .chain(&z.patterns)
                    .filter_map(|t| t.schema.as_deref())
                    .chain(z.schemas.iter().map(String::as_str))
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v.into_iter()
    }
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and
/// `?` any one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Classic two-pointer match with backtracking to the last star.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Whether some name matches both patterns.
pub fn globs_overlap(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut memo = vec![vec![None; b.len() + 1]; a.len() + 1];
    overlap(&a, &b, 0, 0, &mut memo)
}

fn overlap(a: &[char], b: &[char], i: usize, j: usize, memo: &mut [Vec<Option<bool>>]) -> bool {
    if let Some(r) = memo[i][j] {
        return r;
    }
    let r = if i == a.len() && j == b.len() {
        true
    } else if i < a.len() && a[i] == '*' {
        // The star matches nothing, or one more character of b's word.
        overlap(a, b, i + 1, j, memo) || (j < b.len() && overlap(a, b, i, j + 1, memo))
    } else if j < b.len() && b[j] == '*' {
        overlap(a, b, i, j + 1, memo) || (i < a.len() && overlap(a, b, i + 1, j, memo))
    } else if i < a.len() && j < b.len() {
        (a[i] == '?' || b[j] == '?' || a[i] == b[j]) && overlap(a, b, i + 1, j + 1, memo)
    } else {
        false
    };
    memo[i][j] = Some(r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("django_*", "django_migrations"));
        assert!(glob_match("django_*", "django_"));
        assert!(!glob_match("django_*", "djangox"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*_seq", "users_id_seq"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("*a*b*", "xxbxxaxx"));
        assert!(globs_overlap("django_*", "*_session"));
        assert!(globs_overlap("auth_*", "auth_user"));
        assert!(!globs_overlap("auth_*", "django_*"));
        assert!(!globs_overlap("a?", "abc"));
        assert!(globs_overlap("a*", "*b"));
        assert!(!globs_overlap("x*y", "*z"));
        assert!(globs_overlap("*", "anything"));
    }
}
