//! The templates of `[files]`: a small subset of Go's `text/template` as consul-template uses
//! it, parsed once at deploy (so a bad template is refused with its line) and rendered by the
//! agent whenever what it reads changes. Pure: no IO; the agent supplies the data.
//!
//! ```text
//! {{ service "api" }}                      healthy instances as "addr:port,addr:port"
//! {{ range service "api" }}{{ .Address }}:{{ .Port }}{{ else }}none{{ end }}
//!                                          .Address .Port .ID .Node inside a range
//! {{ key "app/config" }}                   the KV value ("" when the key is absent)
//! {{ keyOrDefault "app/config" "x" }}      the value, or "x" when the key is absent
//! {{/* a comment */}}  {{- trims the whitespace before, -}} after
//! ```
//!
//! A hand-written parser rather than a template crate: the Jinja-like crates do not speak
//! Go-template syntax, and this subset is all consul-template users write for these lookups.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The most a rendered file may hold; a template whose output grows beyond it is an error.
pub const MAX_RENDERED_BYTES: usize = 64 * 1024;

/// A template that cannot be used, with the line (1-based, within the template) where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("template line {line}: {message}")]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

/// Why a parsed template could not be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the rendered file is larger than {} KiB", MAX_RENDERED_BYTES / 1024)]
    TooLarge,
}

/// What a template reads: the agent watches exactly these.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    /// The healthy instances of a service.
    Service(String),
    /// A KV key's value.
    Key(String),
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dependency::Service(s) => write!(f, "service {s:?}"),
            Dependency::Key(k) => write!(f, "key {k:?}"),
        }
    }
}

/// One healthy instance as a template sees it (an address a container on the rendering node
/// can reach).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instance {
    pub address: String,
    pub port: u16,
    pub id: String,
    pub node: String,
}

/// Instance meta holding a task's address on its node's pier network (written by the
/// orchestrator from the task's status).
pub const NETWORK_ADDR_META: &str = "pier-network-addr";

/// Where a container on node `here` reaches an instance registered by node `instance_node`:
/// on the same node at its pier network address (container IP and port), else at its catalog
/// address, unless that is a loopback address (nodes on one machine), where the pier network
/// address is used too. The one rule of the node DNS and of templates.
pub fn reachable_from(
    here: &str,
    instance_node: &str,
    network_addr: Option<&str>,
    address: &str,
    port: u16,
) -> Option<std::net::SocketAddr> {
    let on_network = network_addr.and_then(|a| a.parse().ok());
    if instance_node == here {
        if let Some(addr) = on_network {
            return Some(addr);
        }
    }
    let ip: std::net::IpAddr = address.parse().ok()?;
    // A loopback address is the instance's own host's: no container reaches it. Nodes that
    // publish on loopback share one machine (and so its Docker engine and pier network), so
    // the pier network address is the one that works.
    if ip.is_loopback() {
        if let Some(addr) = on_network {
            return Some(addr);
        }
    }
    Some(std::net::SocketAddr::new(ip, port))
}

/// The values a render reads. A service missing here has no healthy instance; a key missing
/// here is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateData {
    pub services: BTreeMap<String, Vec<Instance>>,
    pub keys: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Address,
    Port,
    Id,
    Node,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Text(String),
    Service(String),
    Key {
        key: String,
        default: Option<String>,
    },
    Field(Field),
    Range {
        service: String,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    nodes: Vec<Node>,
}

/// One `{{ … }}` or the text between two of them.
enum Token<'a> {
    Text(&'a str),
    Action { inner: &'a str, line: usize },
}

/// Splits the template into text and actions, applying the `{{-` / `-}}` trim markers.
fn tokenize(text: &str) -> Result<Vec<Token<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    let line_at = |off: usize| text[..off].matches('\n').count() + 1;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        if trim_next {
            before = before.trim_start();
        }
        let after_open = &rest[open + 2..];
        let trim_before = after_open.starts_with("- ");
        if trim_before {
            before = before.trim_end();
        }
        if !before.is_empty() {
            out.push(Token::Text(before));
        }
        let line = line_at(offset + open);
        let close = after_open.find("}}").ok_or_else(|| TemplateError {
            line,
            message: "`{{` is not closed by `}}`".into(),
        })?;
        let mut inner = &after_open[..close];
        if trim_before {
            inner = &inner[1..];
        }
        trim_next = inner.ends_with(" -");
        if trim_next {
            inner = &inner[..inner.len() - 1];
        }
        out.push(Token::Action { inner, line });
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    let tail = if trim_next { rest.trim_start() } else { rest };
    if !tail.is_empty() {
        out.push(Token::Text(tail));
    }
    Ok(out)
}

/// Splits an action into words: bare words and quoted strings ("…" with Go's escapes, or
/// `…` raw). Strings are returned unquoted, marked `true`.
fn words(inner: &str, line: usize) -> Result<Vec<(String, bool)>, TemplateError> {
    let err = |message: String| TemplateError { line, message };
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err(err("a string is not closed by `\"`".into())),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('\\') => s.push('\\'),
                        Some('"') => s.push('"'),
                        other => {
                            return Err(err(format!(
                                "unknown escape `\\{}` in a string",
                                other.map(String::from).unwrap_or_default()
                            )))
                        }
                    },
                    Some(ch) => s.push(ch),
                }
            }
            out.push((s, true));
        } else if c == '`' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err(err("a raw string is not closed by '`'".into())),
                    Some('`') => break,
                    Some(ch) => s.push(ch),
                }
            }
            out.push((s, true));
        } else {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '"' || ch == '`' {
                    break;
                }
                w.push(ch);
                chars.next();
            }
            out.push((w, false));
        }
    }
    Ok(out)
}

/// A lookup's single string argument, checked.
fn one_string(
    func: &str,
    args: &[(String, bool)],
    line: usize,
    count: usize,
) -> Result<Vec<String>, TemplateError> {
    if args.len() != count || args.iter().any(|(_, quoted)| !quoted) {
        let what = if count == 1 {
            "one quoted argument".to_string()
        } else {
            format!("{count} quoted arguments")
        };
        return Err(TemplateError {
            line,
            message: format!("`{func}` takes {what}, e.g. {}", example(func)),
        });
    }
    Ok(args.iter().map(|(s, _)| s.clone()).collect())
}

fn example(func: &str) -> &'static str {
    match func {
        "service" => "{{ service \"api\" }}",
        "keyOrDefault" => "{{ keyOrDefault \"app/config\" \"default\" }}",
        _ => "{{ key \"app/config\" }}",
    }
}

fn check_service(name: &str, line: usize) -> Result<String, TemplateError> {
    if super::is_valid_name(name) {
        Ok(name.to_string())
    } else {
        Err(TemplateError {
            line,
            message: format!(
                "{name:?} is not a service name (a-z, 0-9 and '-', starting with a letter)"
            ),
        })
    }
}

fn check_key(key: &str, line: usize) -> Result<String, TemplateError> {
    if key.is_empty() || key.starts_with('/') || key.len() > 512 || key.contains('\0') {
        return Err(TemplateError {
            line,
            message: format!(
                "{key:?} is not a KV key (not empty, not starting with '/', at most 512 bytes)"
            ),
        });
    }
    Ok(key.to_string())
}

/// What one action is.
enum Action {
    Node(Node),
    Range(String),
    Else,
    End,
    Comment,
}

fn action(inner: &str, line: usize, in_range: bool) -> Result<Action, TemplateError> {
    let trimmed = inner.trim();
    if trimmed.starts_with("/*") {
        if !trimmed.ends_with("*/") {
            return Err(TemplateError {
                line,
                message: "a comment `{{/* … */}}` is not closed".into(),
            });
        }
        return Ok(Action::Comment);
    }
    let w = words(trimmed, line)?;
    let Some(((head, quoted), args)) = w.split_first() else {
        return Err(TemplateError {
            line,
            message: "empty action `{{ }}`".into(),
        });
    };
    let unknown = || {
        TemplateError {
        line,
        message: format!(
            "unknown function or field {:?}; use service, key, keyOrDefault, range … end, or .Address/.Port/.ID/.Node inside a range",
            trimmed
        ),
    }
    };
    if *quoted {
        return Err(unknown());
    }
    match head.as_str() {
        "service" => {
            let a = one_string("service", args, line, 1)?;
            Ok(Action::Node(Node::Service(check_service(&a[0], line)?)))
        }
        "key" => {
            let a = one_string("key", args, line, 1)?;
            Ok(Action::Node(Node::Key {
                key: check_key(&a[0], line)?,
                default: None,
            }))
        }
        "keyOrDefault" => {
            let a = one_string("keyOrDefault", args, line, 2)?;
            Ok(Action::Node(Node::Key {
                key: check_key(&a[0], line)?,
                default: Some(a[1].clone()),
            }))
        }
        "range" => match args {
            [(f, false), rest @ ..] if f == "service" => {
                let a = one_string("service", rest, line, 1)?;
                Ok(Action::Range(check_service(&a[0], line)?))
            }
            _ => Err(TemplateError {
                line,
                message: "`range` iterates over `service \"name\"` only: {{ range service \"api\" }}…{{ end }}".into(),
            }),
        },
        "else" if args.is_empty() => Ok(Action::Else),
        "end" if args.is_empty() => Ok(Action::End),
        field if field.starts_with('.') => {
            if !args.is_empty() {
                return Err(unknown());
            }
            let f = match field {
                ".Address" => Field::Address,
                ".Port" => Field::Port,
                ".ID" => Field::Id,
                ".Node" => Field::Node,
                _ => return Err(unknown()),
            };
            if !in_range {
                return Err(TemplateError {
                    line,
                    message: format!("`{field}` is only defined inside `range service \"…\"`"),
                });
            }
            Ok(Action::Node(Node::Field(f)))
        }
        _ => Err(unknown()),
    }
}

/// An open `range` while parsing.
struct Open {
    service: String,
    line: usize,
    body: Vec<Node>,
    otherwise: Option<Vec<Node>>,
}

impl Template {
    /// Parses `text`; errors name the template line.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut stack: Vec<Open> = Vec::new();
        let mut top: Vec<Node> = Vec::new();
        for token in tokenize(text)? {
            let node = match token {
                Token::Text(t) => Node::Text(t.to_string()),
                Token::Action { inner, line } => match action(inner, line, !stack.is_empty())? {
                    Action::Node(n) => n,
                    Action::Comment => continue,
                    Action::Range(service) => {
                        stack.push(Open {
                            service,
                            line,
                            body: Vec::new(),
                            otherwise: None,
                        });
                        continue;
                    }
                    Action::Else => {
                        match stack.last_mut() {
                            Some(open) if open.otherwise.is_none() => {
                                open.otherwise = Some(Vec::new())
                            }
                            Some(_) => {
                                return Err(TemplateError {
                                    line,
                                    message: "a second `else` in one `range`".into(),
                                })
                            }
                            None => {
                                return Err(TemplateError {
                                    line,
                                    message: "`else` outside a `range`".into(),
                                })
                            }
                        }
                        continue;
                    }
                    Action::End => {
                        let open = stack.pop().ok_or_else(|| TemplateError {
                            line,
                            message: "`end` without a `range`".into(),
                        })?;
                        Node::Range {
                            service: open.service,
                            body: open.body,
                            otherwise: open.otherwise.unwrap_or_default(),
                        }
                    }
                },
            };
            match stack.last_mut() {
                Some(Open {
                    otherwise: Some(o), ..
                }) => o.push(node),
                Some(open) => open.body.push(node),
                None => top.push(node),
            }
        }
        if let Some(open) = stack.pop() {
            return Err(TemplateError {
                line: open.line,
                message: "`range` is not closed by `{{ end }}`".into(),
            });
        }
        Ok(Template { nodes: top })
    }

    /// Everything the template reads.
    pub fn dependencies(&self) -> BTreeSet<Dependency> {
        fn walk(nodes: &[Node], out: &mut BTreeSet<Dependency>) {
            for n in nodes {
                match n {
                    Node::Service(s) => {
                        out.insert(Dependency::Service(s.clone()));
                    }
                    Node::Key { key, .. } => {
                        out.insert(Dependency::Key(key.clone()));
                    }
                    Node::Range {
                        service,
                        body,
                        otherwise,
                    } => {
                        out.insert(Dependency::Service(service.clone()));
                        walk(body, out);
                        walk(otherwise, out);
                    }
                    Node::Text(_) | Node::Field(_) => {}
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.nodes, &mut out);
        out
    }

    /// The file's content for `data`. Instances are rendered in a stable order (sorted), so
    /// an unchanged set renders the same bytes and causes no restart.
    pub fn render(&self, data: &TemplateData) -> Result<String, RenderError> {
        let mut out = String::new();
        render_nodes(&self.nodes, data, None, &mut out)?;
        Ok(out)
    }
}

fn instances<'a>(data: &'a TemplateData, service: &str) -> Vec<&'a Instance> {
    let mut list: Vec<&Instance> = data.services.get(service).into_iter().flatten().collect();
    list.sort();
    list
}

fn render_nodes(
    nodes: &[Node],
    data: &TemplateData,
    dot: Option<&Instance>,
    out: &mut String,
) -> Result<(), RenderError> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Service(s) => {
                let list: Vec<String> = instances(data, s)
                    .iter()
                    .map(|i| format!("{}:{}", i.address, i.port))
                    .collect();
                out.push_str(&list.join(","));
            }
            Node::Key { key, default } => match (data.keys.get(key), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {}
            },
            Node::Field(f) => {
                if let Some(i) = dot {
                    match f {
                        Field::Address => out.push_str(&i.address),
                        Field::Port => out.push_str(&i.port.to_string()),
                        Field::Id => out.push_str(&i.id),
                        Field::Node => out.push_str(&i.node),
                    }
                }
            }
            Node::Range {
                service,
                body,
                otherwise,
            } => {
                let list = instances(data, service);
                if list.is_empty() {
                    render_nodes(otherwise, data, dot, out)?;
                }
                for i in list {
                    render_nodes(body, data, Some(i), out)?;
                }
            }
        }
        if out.len() > MAX_RENDERED_BYTES {
            return Err(RenderError::TooLarge);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachable_addresses_from_a_container() {
        let net = Some("172.20.0.5:8080");
        let at = |a: &str| Some(a.parse::<std::net::SocketAddr>().expect("test address"));
        // Same node: the pier network address.
        assert_eq!(
            reachable_from("a", "a", net, "10.0.0.2", 31000),
            at("172.20.0.5:8080")
        );
        // Another machine: its published address.
        assert_eq!(
            reachable_from("a", "b", net, "10.0.0.3", 31000),
            at("10.0.0.3:31000")
        );
        // Another node publishing on loopback (same machine): the pier network address.
        assert_eq!(
            reachable_from("a", "b", net, "127.0.0.1", 31000),
            at("172.20.0.5:8080")
        );
        // Nothing better known: the catalog address as it is.
        assert_eq!(
            reachable_from("a", "b", None, "127.0.0.1", 31000),
            at("127.0.0.1:31000")
        );
        assert_eq!(reachable_from("a", "b", None, "not-an-ip", 31000), None);
    }

    fn data() -> TemplateData {
        let inst = |a: &str, p: u16| Instance {
            address: a.into(),
            port: p,
            id: format!("api-{p}"),
            node: "n1".into(),
        };
        TemplateData {
            services: BTreeMap::from([(
                "api".to_string(),
                vec![inst("10.0.0.2", 81), inst("10.0.0.1", 80)],
            )]),
            keys: BTreeMap::from([("app/config".to_string(), "debug=1".to_string())]),
        }
    }

    fn render(t: &str) -> String {
        Template::parse(t).unwrap().render(&data()).unwrap()
    }

    #[test]
    fn lookups_render_sorted_and_stable() {
        assert_eq!(
            render("up={{ service \"api\" }}"),
            "up=10.0.0.1:80,10.0.0.2:81"
        );
        assert_eq!(
            render("{{ range service \"api\" }}server {{ .Address }}:{{ .Port }} # {{.ID}}@{{.Node}}\n{{ end }}"),
            "server 10.0.0.1:80 # api-80@n1\nserver 10.0.0.2:81 # api-81@n1\n"
        );
        assert_eq!(
            render("{{ range service \"db\" }}x{{ else }}none{{ end }}"),
            "none"
        );
        assert_eq!(render("{{ service \"db\" }}"), "");
        assert_eq!(render("[{{ key \"app/config\" }}]"), "[debug=1]");
        assert_eq!(render("[{{ key \"app/other\" }}]"), "[]");
        assert_eq!(
            render("{{ keyOrDefault \"app/other\" \"x=\\\"1\\\"\" }}"),
            "x=\"1\""
        );
        assert_eq!(render("{{ keyOrDefault `app/config` `d` }}"), "debug=1");
        assert_eq!(render("a {{/* note */}}b"), "a b");
        assert_eq!(
            render("a  \n {{- key \"app/config\" -}} \n  b"),
            "adebug=1b"
        );
        assert_eq!(render("no actions at all\n"), "no actions at all\n");
        let t = Template::parse(
            "{{ key \"a\" }}{{ range service \"api\" }}{{ end }}{{ service \"web\" }}",
        )
        .unwrap();
        assert_eq!(
            t.dependencies().into_iter().collect::<Vec<_>>(),
            vec![
                Dependency::Service("api".into()),
                Dependency::Service("web".into()),
                Dependency::Key("a".into())
            ]
        );
    }

    #[test]
    fn errors_name_the_template_line() {
        let err = |t: &str| Template::parse(t).unwrap_err();
        let e = err("line one\nline two {{ servic \"api\" }}\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("unknown function"), "{e}");
        assert_eq!(e.to_string().split(':').next(), Some("template line 2"));
        assert_eq!(err("a\nb\n{{ service api }}").line, 3);
        assert!(err("{{ service api }}").message.contains("quoted"));
        assert!(err("{{ service \"Bad_Name\" }}")
            .message
            .contains("not a service name"));
        assert!(err("{{ key \"/abs\" }}").message.contains("not a KV key"));
        assert!(err("{{ key \"a\" \"b\" }}")
            .message
            .contains("one quoted argument"));
        let e = err("x\n{{ range service \"api\" }}\n{{ .Address }}");
        assert_eq!((e.line, e.message.contains("not closed")), (2, true));
        assert!(err("{{ end }}").message.contains("without a `range`"));
        assert!(err("{{ else }}").message.contains("outside"));
        assert!(err("{{ .Address }}")
            .message
            .contains("only defined inside"));
        assert!(err("{{ range service \"api\" }}{{ .Foo }}{{ end }}")
            .message
            .contains("unknown"));
        assert_eq!(err("a\n\n{{ key \"x\" ").line, 3);
        assert!(err("{{ key \"x }}").message.contains("not closed"));
        assert!(err("{{ key `x }}")
            .message
            .contains("raw string is not closed"));
        assert!(err("{{ }}").message.contains("empty"));
        assert!(err("{{ range key \"x\" }}{{ end }}")
            .message
            .contains("service"));
    }

    #[test]
    fn a_render_larger_than_the_limit_is_refused() {
        let mut d = data();
        d.keys.insert("big".into(), "x".repeat(40 * 1024));
        let t = Template::parse("{{ key \"big\" }}{{ key \"big\" }}").unwrap();
        assert_eq!(t.render(&d), Err(RenderError::TooLarge));
    }
}
