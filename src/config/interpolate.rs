//! `${VAR}` substitution from the environment, applied to every string value
//! of the parsed TOML tree (never to the raw text, so a value cannot inject
//! TOML syntax).
//!
//! Forms: `${VAR}` (unset is an error naming the variable), `${VAR:-default}`
//! (the default when unset or empty), and `$$` for a literal `$`.

use toml::{Table, Value};

/// What interpolation produced: the substituted values are remembered so that
/// later error messages can be scrubbed of them (they are often secrets).
#[derive(Default)]
pub struct Substitutions {
    pub values: Vec<String>,
}

impl Substitutions {
    /// Replaces every substituted value in `message` with `***`.
    pub fn scrub(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for value in self.values.iter().filter(|v| !v.is_empty()) {
            out = out.replace(value.as_str(), "***");
        }
        out
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InterpolateError {
    #[error("{key}: environment variable {var} is not set")]
    Unset { key: String, var: String },
    #[error("{key}: unterminated or empty ${{...}} reference")]
    Syntax { key: String },
}

pub fn interpolate_table(
    table: &mut Table,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Substitutions, InterpolateError> {
    let mut subs = Substitutions::default();
    for (key, value) in table.iter_mut() {
        walk(value, key, lookup, &mut subs)?;
    }
    Ok(subs)
}

fn walk(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    subs: &mut Substitutions,
) -> Result<(), InterpolateError> {
    match value {
        Value::String(s) if s.contains('$') => *s = interpolate_str(s, path, lookup, subs)?,
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{path}[{i}]"), lookup, subs)?;
            }
        }
        Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                walk(item, &format!("{path}.{key}"), lookup, subs)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn interpolate_str(
    input: &str,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    subs: &mut Substitutions,
) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| InterpolateError::Syntax { key: key.to_owned() })?;
            let reference = &after[..end];
            let (var, default) = match reference.split_once(":-") {
                Some((var, default)) => (var, Some(default)),
                None => (reference, None),
            };
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolateError::Syntax { key: key.to_owned() });
            }
            let value = match (lookup(var).filter(|v| !v.is_empty()), default) {
                (Some(value), _) => value,
                (None, Some(default)) => default.to_owned(),
                (None, None) => {
                    return Err(InterpolateError::Unset { key: key.to_owned(), var: var.to_owned() });
                }
            };
            out.push_str(&value);
            subs.values.push(value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<(Table, Substitutions), InterpolateError> {
        let mut table: Table = text.parse().unwrap();
        let env = |name: &str| match name {
            "SECRET" => Some("s3cr3t".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let subs = interpolate_table(&mut table, &env)?;
        Ok((table, subs))
    }

    #[test]
    fn substitutes_nested_values_and_arrays() {
        let (table, subs) = run("[a.b]\nlist = [\"x-${SECRET}-y\"]\nplain = \"$$5 ${SECRET}\"").unwrap();
        assert_eq!(table["a"]["b"]["list"][0].as_str(), Some("x-s3cr3t-y"));
        assert_eq!(table["a"]["b"]["plain"].as_str(), Some("$5 s3cr3t"));
        assert_eq!(subs.scrub("bad value s3cr3t"), "bad value ***");
    }

    #[test]
    fn unset_variable_names_key_and_variable() {
        let err = run("[sources.acme]\nsecrets = [\"${NOPE}\"]").err().unwrap();
        assert_eq!(err.to_string(), "sources.acme.secrets[0]: environment variable NOPE is not set");
    }

    #[test]
    fn default_applies_when_unset_or_empty() {
        let (table, _) = run("a = \"${NOPE:-fallback}\"\nb = \"${EMPTY:-d}\"").unwrap();
        assert_eq!(table["a"].as_str(), Some("fallback"));
        assert_eq!(table["b"].as_str(), Some("d"));
    }

    #[test]
    fn malformed_reference_is_an_error() {
        assert!(matches!(run("a = \"${OPEN\"").err(), Some(InterpolateError::Syntax { .. })));
        assert!(matches!(run("a = \"${}\"").err(), Some(InterpolateError::Syntax { .. })));
        assert!(matches!(run("a = \"${A B}\"").err(), Some(InterpolateError::Syntax { .. })));
    }

    #[test]
    fn lone_dollar_is_kept() {
        let (table, _) = run("a = \"costs $5\"").unwrap();
        assert_eq!(table["a"].as_str(), Some("costs $5"));
    }
}
