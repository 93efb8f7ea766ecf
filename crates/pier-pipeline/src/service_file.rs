//! The service file in the repository (`pier deploy` format) with `image` filled in by the
//! pipeline, checked with the orchestrator's own validation before anything is built.

use pier_api::service::{parse_service_file, Limits, SpecError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service file {path} is invalid: {detail}")]
pub struct ServiceFileError {
    pub path: String,
    pub detail: String,
}

/// `text` with `image = "<image>"`, replacing an `image` the file may already set.
pub fn fill_image(path: &str, text: &str, image: &str) -> Result<String, ServiceFileError> {
    let err = |detail: String| ServiceFileError {
        path: path.to_string(),
        detail,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| err(toml_error(text, &e)))?;
    let image_line = format!("image = {}\n", toml::Value::String(image.to_string()));
    if table.contains_key("image") {
        // Rare: the file names an image of its own. Re-serialising loses comments, which is
        // fine for a generated revision.
        table.insert("image".into(), toml::Value::String(image.to_string()));
        return toml::to_string(&table).map_err(|e| err(e.to_string()));
    }
    // Keys before the first [section] belong to the root table, so prepending is enough and
    // keeps the user's layout (and line numbers, shifted by one) intact.
    Ok(format!("{image_line}{text}"))
}

/// Validates the filled file as `pier deploy` would; returns the service name.
pub fn check(path: &str, text: &str, image: &str) -> Result<String, ServiceFileError> {
    let filled = fill_image(path, text, image)?;
    let prepended = filled.len() > text.len() && filled.ends_with(text);
    parse_service_file(&filled, Limits::default())
        .map(|spec| spec.name)
        .map_err(|mut e: SpecError| {
            if prepended {
                e.line = e.line.map(|l| l.saturating_sub(1).max(1));
            }
            ServiceFileError {
                path: path.to_string(),
                detail: e.to_string(),
            }
        })
}

fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {col}: {}", e.message().trim())
        }
        None => e.message().trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the site\nname = \"hello\"\ncount = 2\nport = 8080\n\n[health]\nhttp = \"/\"\ninterval = \"1s\"\n";

    #[test]
    fn image_is_prepended() {
        let out = fill_image("pier.toml", FILE, "127.0.0.1:5000/hello:abc").unwrap();
        assert!(out.starts_with("image = \"127.0.0.1:5000/hello:abc\"\n# the site\n"));
        assert_eq!(
            check("pier.toml", FILE, "127.0.0.1:5000/hello:abc").unwrap(),
            "hello"
        );
    }

    #[test]
    fn an_existing_image_is_replaced() {
        let with = format!("image = \"old:1\"\n{FILE}");
        let out = fill_image("pier.toml", &with, "127.0.0.1:5000/hello:abc").unwrap();
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(t["image"].as_str(), Some("127.0.0.1:5000/hello:abc"));
        assert_eq!(t["health"]["http"].as_str(), Some("/"));
    }

    #[test]
    fn errors_point_at_the_users_lines() {
        let bad = "name = \"hello\"\nport = 99999\n";
        let e = check("pier.toml", bad, "127.0.0.1:5000/hello:abc").unwrap_err();
        assert!(e.to_string().contains("pier.toml"), "{e}");
        assert!(e.detail.contains("line 2"), "{e}");
        let syntax = "name = \"hello\"\nport = \n";
        let e = check("pier.toml", syntax, "x:1").unwrap_err();
        assert!(e.detail.contains("line 2"), "{e}");
        let unknown = "name = \"hello\"\nprot = 8080\n";
        let e = check("pier.toml", unknown, "127.0.0.1:5000/hello:abc").unwrap_err();
        assert!(e.detail.contains("prot"), "{e}");
    }
}
