//! The chart README's values table, generated from the `# --` comments in
//! `chart/values.yaml` (the helm-docs convention), so the two cannot drift.
//!
//! A key with a `# --` comment above it is one row (its whole subtree is the
//! default); a key without one is a section whose children are documented.
//! A leaf value that no comment covers is an error.

use anyhow::{Result, bail};

pub const START: &str =
    "<!-- values table: generated from values.yaml by tests/src/values_doc.rs -->";
pub const END: &str = "<!-- end of values table -->";

pub struct Row {
    pub key: String,
    pub default: String,
    pub description: String,
}

/// Every documented key of `values.yaml`, in file order.
pub fn rows(values_yaml: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut comment: Option<String> = None;
    // (indent, key) of the keys enclosing the current line.
    let mut path: Vec<(usize, String)> = Vec::new();
    // Indent of the documented key whose subtree we are inside, if any.
    let mut covered_by: Option<usize> = None;
    for (number, line) in values_yaml.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(text) = trimmed.strip_prefix("# --") {
            comment = Some(text.trim().to_string());
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            if let Some(c) = comment.as_mut() {
                c.push(' ');
                c.push_str(text.trim());
            }
            continue;
        }
        if trimmed.is_empty() {
            comment = None;
            continue;
        }
        if covered_by.is_some_and(|at| indent > at) {
            continue;
        }
        covered_by = None;
        if trimmed.starts_with("- ") {
            bail!(
                "values.yaml line {}: a list item outside a documented key",
                number + 1
            );
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            bail!("values.yaml line {}: not a `key: value` line", number + 1);
        };
        while path.last().is_some_and(|(at, _)| *at >= indent) {
            path.pop();
        }
        let full: Vec<&str> = path
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key.trim()])
            .collect();
        let full = full.join(".");
        let value = value.trim();
        match comment.take() {
            Some(description) => {
                rows.push(Row {
                    key: full,
                    default: if value.is_empty() {
                        "see values.yaml".into()
                    } else {
                        format!("`{value}`")
                    },
                    description,
                });
                covered_by = Some(indent);
            }
            None if value.is_empty() => {}
            None => bail!(
                "values.yaml line {}: `{full}` has no `# --` comment saying what it is",
                number + 1
            ),
        }
        path.push((indent, key.trim().to_string()));
    }
    Ok(rows)
}

/// The markdown table, between its markers.
pub fn table(values_yaml: &str) -> Result<String> {
    let mut out = format!("{START}\n\n| key | default | description |\n|---|---|---|\n");
    for row in rows(values_yaml)? {
        let description = row.description.replace('|', "\\|");
        let default = row.default.replace('|', "\\|");
        out.push_str(&format!("| `{}` | {default} | {description} |\n", row.key));
    }
    out.push('\n');
    out.push_str(END);
    Ok(out)
}

/// `readme` with its table replaced by the one `values_yaml` gives.
pub fn update(readme: &str, values_yaml: &str) -> Result<String> {
    let (Some(start), Some(end)) = (readme.find(START), readme.find(END)) else {
        bail!("chart/README.md has no values table markers ({START} ... {END})");
    };
    Ok(format!(
        "{}{}{}",
        &readme[..start],
        table(values_yaml)?,
        &readme[end + END.len()..]
    ))
}
