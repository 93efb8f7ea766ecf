//! `env_file = "app.env"` of a service file: `KEY=VALUE` lines read by `pier deploy` on the
//! machine it runs on (the path is relative to the service file) and sent with the file; the
//! service's own `[env]` wins over it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::validate::{ServiceSpec, SpecError};

/// A line of an env file that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct EnvFileError {
    pub line: usize,
    pub message: String,
}

fn is_env_name(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `KEY=VALUE` lines: blank lines and lines starting with `#` are skipped, the value
/// is everything after the first `=`, without surrounding blanks and one pair of surrounding
/// quotes (`"…"` or `'…'`, which keep blanks inside), and a key may be set only once.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, EnvFileError> {
    let mut out = BTreeMap::new();
    let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |message: String| EnvFileError {
            line: line_no,
            message,
        };
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(err(format!(
                "expected KEY=VALUE, got {:?}",
                trimmed.chars().take(40).collect::<String>()
            )));
        };
        let key = key.trim_end();
        if !is_env_name(key) {
            return Err(err(format!(
                "{key:?} is not a variable name (letters, digits and '_', not starting with a digit)"
            )));
        }
        if let Some(first) = first_seen.get(key) {
            return Err(err(format!("{key} is set twice (first on line {first})")));
        }
        let value = unquote(value.trim());
        if value.contains('\0') {
            return Err(err(format!("the value of {key} contains a NUL byte")));
        }
        first_seen.insert(key.to_string(), line_no);
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

/// The `env_file` a service file names, if any (read by the CLI before sending the file;
/// other errors in the file are left to the full validation).
pub fn env_file_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Only {
        env_file: Option<String>,
    }
    toml::from_str::<Only>(text).ok()?.env_file
}

/// Adds the variables read from the service's `env_file` to its spec: `[env]` (and
/// `[secrets]`) win. Refuses when the file names an `env_file` but no variables came with
/// it, or variables came for a file that names none.
pub fn merge_env_file(
    spec: &mut ServiceSpec,
    vars: Option<BTreeMap<String, String>>,
) -> Result<(), SpecError> {
    let plain = |message: String| SpecError {
        message,
        line: None,
        column: None,
    };
    match (&spec.env_file, vars) {
        (None, None) => Ok(()),
        (Some(path), None) => Err(plain(format!(
            "`env_file` = {path:?} is read by `pier deploy` on the machine it runs on, but this request carries no variables from it; deploy with the CLI, or put the variables in [env]"
        ))),
        (None, Some(_)) => Err(plain(
            "variables from an env file were sent, but the service file names no `env_file`"
                .into(),
        )),
        (Some(_), Some(vars)) => {
            for (key, value) in vars {
                if !is_env_name(&key) {
                    return Err(plain(format!("env file: {key:?} is not a variable name")));
                }
                if !spec.env.contains_key(&key) && !spec.secrets.contains_key(&key) {
                    spec.env.insert(key, value);
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_quotes_and_errors() {
        let text = "# settings\n\nLOG_LEVEL=debug\n  GREETING = \"hello world\"\r\nEMPTY=\nURL=http://x/?a=b\nSINGLE='it''s'\n";
        let vars = parse_env_file(text).unwrap();
        assert_eq!(vars["LOG_LEVEL"], "debug");
        assert_eq!(
            vars["GREETING"], "hello world",
            "quotes removed, spaces around '=' too"
        );
        assert_eq!(vars["EMPTY"], "");
        assert_eq!(vars["URL"], "http://x/?a=b", "split at the first '='");
        assert_eq!(vars["SINGLE"], "it''s");
        assert_eq!(vars.len(), 5);

        let e = parse_env_file("A=1\nnot a pair\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.to_string().starts_with("line 2: expected KEY=VALUE"),
            "{e}"
        );
        let e = parse_env_file("A=1\n\n# c\n1BAD=x\n").unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.message.contains("not a variable name"), "{e}");
        let e = parse_env_file("A=1\nB=2\nA=3\n").unwrap_err();
        assert_eq!(e.to_string(), "line 3: A is set twice (first on line 1)");
        let e = parse_env_file("MY-VAR=1\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn env_file_is_found_in_the_service_file() {
        assert_eq!(
            env_file_of("name = \"a\"\nenv_file = \"app.env\"\n[env]\nX = \"1\"\n").as_deref(),
            Some("app.env")
        );
        assert_eq!(env_file_of("name = \"a\"\n"), None);
    }
}
