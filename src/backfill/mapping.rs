//! The product-to-SKU mapping: reading and validating the CSV file the
//! business edits (`product_id,sku`), before anything is written.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// One mapping row: legacy `product_id` gives new `sku`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingRow {
    pub product_id: String,
    pub sku: String,
    /// 1-based line number in the file.
    pub line: usize,
}

/// A validated mapping: no duplicate (product, SKU) pairs, at least one row.
#[derive(Debug, Clone)]
pub struct Mapping {
    rows: Vec<MappingRow>,
}

/// Everything wrong with a mapping file, all at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    pub source: String,
    pub problems: Vec<String>,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SKU mapping {}:", self.source)?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MappingError {}

const COLUMNS: [&str; 2] = ["product_id", "sku"];

impl Mapping {
    /// Reads and validates a mapping file.
    pub fn load(path: &Path) -> anyhow::Result<Mapping> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read SKU mapping file {}: {e}", path.display()))?;
        Ok(Mapping::parse(&text, &path.display().to_string())?)
    }

    /// Parses CSV text: a header naming exactly the columns `product_id` and
    /// `sku` (any order, any case), then one row per (product, SKU). Blank
    /// lines and lines starting with `#` are ignored; fields may be quoted
    /// with `"` (`""` inside quotes is a quote).
    pub fn parse(text: &str, source: &str) -> Result<Mapping, MappingError> {
        let mut problems = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let fail = |problems: Vec<String>| MappingError {
            source: source.to_string(),
            problems,
        };
        let Some((hline, header)) = lines.next() else {
            return Err(fail(vec![
                "the file is empty: expected a header `product_id,sku` and at least one row".into(),
            ]));
        };
        let header = match split_csv_line(header) {
            Ok(h) => h,
            Err(e) => return Err(fail(vec![format!("line {hline}: {e}")])),
        };
        let header: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
        let unknown: Vec<&str> = header
            .iter()
            .filter(|h| !COLUMNS.contains(&h.as_str()))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            problems.push(format!(
                "line {hline}: unknown column(s) {}; the header must name exactly product_id and sku",
                quoted(&unknown)
            ));
        }
        let missing: Vec<&str> = COLUMNS
            .iter()
            .copied()
            .filter(|c| !header.iter().any(|h| h == c))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "line {hline}: missing column(s) {}",
                quoted(&missing)
            ));
        }
        for c in COLUMNS {
            if header.iter().filter(|h| *h == c).count() > 1 {
                problems.push(format!("line {hline}: column \"{c}\" appears twice"));
            }
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let pi = header.iter().position(|h| h == "product_id").unwrap();
        let si = header.iter().position(|h| h == "sku").unwrap();

        let mut rows = Vec::new();
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for (n, line) in lines {
            let fields = match split_csv_line(line) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(format!("line {n}: {e}"));
                    continue;
                }
            };
            if fields.len() != header.len() {
                problems.push(format!(
                    "line {n}: {} field(s), the header has {}",
                    fields.len(),
                    header.len()
                ));
                continue;
            }
            let product_id = fields[pi].trim().to_string();
            let sku = fields[si].trim().to_string();
            if product_id.is_empty() || sku.is_empty() {
                problems.push(format!("line {n}: product_id and sku must not be empty"));
                continue;
            }
            let key = (product_id.clone(), sku.clone());
            if let Some(first) = seen.get(&key) {
                problems.push(format!(
                    "line {n}: duplicate mapping {product_id} -> {sku} (first on line {first})"
                ));
                continue;
            }
            seen.insert(key, n);
            rows.push(MappingRow {
                product_id,
                sku,
                line: n,
            });
        }
        if rows.is_empty() && problems.is_empty() {
            problems.push("the file has a header but no mapping rows".into());
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(Mapping { rows })
    }

    pub fn rows(&self) -> &[MappingRow] {
        &self.rows
    }

    /// The product ids, parallel to [`Mapping::skus`] (the `$n::text[]`
    /// parameters the SQL unnests).
    pub fn product_ids(&self) -> Vec<String> {
        self.rows.iter().map(|r| r.product_id.clone()).collect()
    }

    pub fn skus(&self) -> Vec<String> {
        self.rows.iter().map(|r| r.sku.clone()).collect()
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits one CSV line into fields (RFC 4180 quoting, no multi-line fields).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => in_quotes = false,
                _ => cur.push(c),
            }
        } else {
            match c {
                ',' => {
                    fields.push(std::mem::take(&mut cur));
                    was_quoted = false;
                }
                '"' if cur.trim().is_empty() && !was_quoted => {
                    cur.clear();
                    in_quotes = true;
                    was_quoted = true;
                }
                '"' => return Err("a quote inside an unquoted field".into()),
                _ if was_quoted && !c.is_whitespace() => {
                    return Err("text after a closing quote".into())
                }
                _ => cur.push(c),
            }
        }
    }
    if in_quotes {
        return Err("unterminated quoted field".into());
    }
    fields.push(cur);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_in_any_order_quotes_and_comments() {
        let m = Mapping::parse(
            "# comment\nSKU, Product_ID\n\nA-SKU,P1\n\"B,SKU\",\"P\"\"2\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(m.product_ids(), ["P1", "P\"2"]);
        assert_eq!(m.skus(), ["A-SKU", "B,SKU"]);
        assert_eq!(m.rows()[1].line, 5);
    }

    #[test]
    fn one_product_may_give_several_skus() {
        let m = Mapping::parse("product_id,sku\nB,X\nB,Y\n", "t").unwrap();
        assert_eq!(m.rows().len(), 2);
    }

    #[test]
    fn reports_every_problem() {
        let e = Mapping::parse("product,sku,price\n", "t").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("unknown column(s) \"product\", \"price\""),
            "{s}"
        );
        assert!(s.contains("missing column(s) \"product_id\""), "{s}");

        let e = Mapping::parse("product_id,sku\nA,X\nB,Y\nA,X\nC\n,Z\n", "t").unwrap_err();
        assert_eq!(
            e.problems,
            [
                "line 4: duplicate mapping A -> X (first on line 2)",
                "line 5: 1 field(s), the header has 2",
                "line 6: product_id and sku must not be empty",
            ]
        );
    }

    #[test]
    fn empty_files_are_errors() {
        assert!(Mapping::parse("", "t").unwrap_err().problems[0].contains("empty"));
        assert!(Mapping::parse("\n# x\n", "t").unwrap_err().problems[0].contains("empty"));
        assert!(Mapping::parse("product_id,sku\n", "t")
            .unwrap_err()
            .problems[0]
            .contains("no mapping rows"));
    }

    #[test]
    fn bad_quoting_is_an_error() {
        let e = Mapping::parse("product_id,sku\n\"A,X\n", "t").unwrap_err();
        assert_eq!(e.problems, ["line 2: unterminated quoted field"]);
    }
}
