//! `.dockerignore`: the Docker CLI applies it on the client side before sending the build
//! context, so a builder that sends its own context has to do the same. Same rules: one
//! pattern per line, `#` comments, `*` `?` `[...]` within a path segment, `**` across
//! segments, `!` re-includes, the last matching line wins, and a pattern matching a directory
//! matches everything below it.

use regex::Regex;

pub struct IgnoreRules {
    rules: Vec<(Regex, bool)>,
}

impl IgnoreRules {
    /// Parses the file; lines that cannot be turned into a pattern are skipped.
    pub fn parse(text: &str) -> IgnoreRules {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|line| {
                let (exception, pattern) = match line.strip_prefix('!') {
                    Some(p) => (true, p.trim()),
                    None => (false, line),
                };
                let pattern = clean(pattern);
                if pattern.is_empty() {
                    return None;
                }
                Regex::new(&glob_to_regex(&pattern))
                    .ok()
                    .map(|r| (r, exception))
            })
            .collect();
        IgnoreRules { rules }
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context.
    pub fn is_excluded(&self, path: &str) -> bool {
        let mut excluded = false;
        for (re, exception) in &self.rules {
            if matches_or_parent(re, path) {
                excluded = !exception;
            }
        }
        excluded
    }

    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, e)| *e)
    }
}

/// Like Go's `filepath.Clean` plus Docker's stripping of a leading `/`.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn matches_or_parent(re: &Regex, path: &str) -> bool {
    if re.is_match(path) {
        return true;
    }
    path.match_indices('/')
        .any(|(i, _)| re.is_match(&path[..i]))
}

fn glob_to_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 1;
                if chars.get(i + 1) == Some(&'/') {
                    // `**/` : any number of leading directories, including none.
                    out.push_str("(?:.*/)?");
                    i += 1;
                } else {
                    out.push_str(".*");
                }
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '[' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == ']')
                    .map(|p| i + 1 + p);
                match end {
                    Some(end) => {
                        let mut class: String = chars[i + 1..end].iter().collect();
                        if let Some(rest) = class.strip_prefix('^') {
                            class = format!("^{}", regex::escape(rest));
                        } else {
                            class = regex::escape(&class).replace("\\-", "-");
                        }
                        out.push('[');
                        out.push_str(&class);
                        out.push(']');
                        i = end;
                    }
                    None => out.push_str(&regex::escape("[")),
                }
            }
            '\\' if i + 1 < chars.len() => {
                i += 1;
                out.push_str(&regex::escape(&chars[i].to_string()));
            }
            other => out.push_str(&regex::escape(&other.to_string())),
        }
        i += 1;
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::IgnoreRules;

    #[test]
    fn docker_semantics() {
        let rules = IgnoreRules::parse(
            "# comment\n\n*.md\n!README.md\ntarget\n/tmp/*.log\n**/*.bak\nsecret?.txt\n[ab].dat\n",
        );
        assert!(rules.is_excluded("notes.md"));
        assert!(!rules.is_excluded("README.md"));
        assert!(
            !rules.is_excluded("docs/notes.md"),
            "* does not cross directories"
        );
        assert!(rules.is_excluded("target"));
        assert!(
            rules.is_excluded("target/debug/x"),
            "a matched directory takes its content"
        );
        assert!(rules.is_excluded("tmp/a.log"));
        assert!(!rules.is_excluded("tmp/sub/a.log"));
        assert!(rules.is_excluded("x.bak"));
        assert!(rules.is_excluded("a/b/c/x.bak"));
        assert!(rules.is_excluded("secret1.txt"));
        assert!(!rules.is_excluded("secret12.txt"));
        assert!(rules.is_excluded("a.dat"));
        assert!(!rules.is_excluded("c.dat"));
        assert!(!rules.is_excluded("www/index.html"));
        assert!(rules.has_exceptions());
    }

    #[test]
    fn last_match_wins() {
        let rules = IgnoreRules::parse("www\n!www/keep.html\n");
        assert!(rules.is_excluded("www/drop.html"));
        assert!(!rules.is_excluded("www/keep.html"));
        let rules = IgnoreRules::parse("!www/keep.html\nwww\n");
        assert!(rules.is_excluded("www/keep.html"));
        let rules = IgnoreRules::parse("./build/../dist\n");
        assert!(rules.is_excluded("dist/app.js"));
    }
}
