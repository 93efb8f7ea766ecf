//! The service file format: the issue's minimal file, defaults, and one specific error per
//! kind of bad input, each pointing at its line.

use pier_api::service::{parse_service_file, Amount, HealthKind, Limits, PlacementStrategy};

const MINIMAL: &str = r#"name = "hello"
image = "127.0.0.1:5000/hello:v1"
count = 3
port = 8080

[health]
http = "/healthz"
interval = "1s"
"#;

fn err(text: &str) -> String {
    parse_service_file(text, Limits::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn minimal_file_works_with_defaults() {
    let spec = parse_service_file(MINIMAL, Limits::default()).unwrap();
    assert_eq!(spec.name, "hello");
    assert_eq!(spec.count, 3);
    assert_eq!(spec.ports, vec![8080]);
    let health = spec.health.unwrap();
    assert_eq!(
        health.kind,
        HealthKind::Http {
            path: "/healthz".into(),
            port: 8080
        }
    );
    assert_eq!(health.interval_ms, 1000);
    assert_eq!(health.timeout_ms, 1000);
    assert_eq!(health.retries, 3);
    assert_eq!(spec.route, "hello.localhost");
    assert_eq!(spec.stop_signal, "SIGTERM");
    assert!(spec.deploy.auto_rollback);
    assert_eq!(spec.deploy.max_surge, Amount::Percent(25));
    assert_eq!(spec.placement.strategy, PlacementStrategy::Spread);
    assert_eq!(spec.cpu_millis, 100);
    assert_eq!(spec.memory_mb, 128);
}

#[test]
fn full_file() {
    let text = r#"
name = "api"
image = "127.0.0.1:5000/api:v2"
count = 4
command = ["/bin/busybox", "httpd"]
args = ["-f", "-p", "8080"]
ports = [8080, 9090]
cpu = 250
memory = "256MiB"
stop_signal = "int"
stop_timeout = "20s"
route = "api.example.test"
zones = ["b", "a"]

[env]
MODE = "prod"

[health]
tcp = true
port = 9090
interval = "2s"
timeout = "500ms"
retries = 2
start_period = "5s"

[deploy]
max_surge = 2
max_unavailable = "50%"
auto_rollback = false
failure_threshold = 2
min_healthy_time = "1s"
drain_delay = "500ms"

[placement]
strategy = "binpack"
binpack_resource = "cpu"
constraints = ["attr.disk == ssd", "node.zone != c", "attr.rack in [r1, r2]"]
distinct_node = true
"#;
    let spec = parse_service_file(text, Limits::default()).unwrap();
    assert_eq!(
        spec.command.as_deref(),
        Some(&["/bin/busybox".to_string(), "httpd".to_string()][..])
    );
    assert_eq!(spec.memory_mb, 256);
    assert_eq!(spec.stop_signal, "SIGINT");
    assert_eq!(spec.stop_timeout_ms, 20_000);
    assert_eq!(spec.placement.zones, vec!["a", "b"]);
    assert_eq!(spec.placement.strategy, PlacementStrategy::BinpackCpu);
    assert_eq!(spec.placement.constraints.len(), 3);
    assert_eq!(spec.placement.constraints[2].values, vec!["r1", "r2"]);
    assert_eq!(spec.deploy.max_unavailable, Amount::Percent(50));
    assert_eq!(spec.deploy.max_surge.resolve(4, true), 2);
    assert_eq!(spec.health.unwrap().kind, HealthKind::Tcp { port: 9090 });
    assert_eq!(spec.env.get("MODE").map(String::as_str), Some("prod"));
}

#[test]
fn identical_meaning_gives_identical_spec() {
    let a = parse_service_file(MINIMAL, Limits::default()).unwrap();
    let b = parse_service_file(
        &format!("# comment\n{MINIMAL}\n[deploy]\nauto_rollback = true\n"),
        Limits::default(),
    )
    .unwrap();
    assert_eq!(a, b);
    let scaled = parse_service_file(
        &MINIMAL.replace("count = 3", "count = 5"),
        Limits::default(),
    )
    .unwrap();
    assert_ne!(a, scaled);
    assert_eq!(a.template(), scaled.template());
}

#[test]
fn invalid_toml_has_position() {
    let e = err("name = \"x\"\nimage = \n");
    assert!(e.starts_with("line 2"), "{e}");
}

#[test]
fn unknown_field_is_an_error_with_position() {
    let e = err(&MINIMAL.replace("interval = \"1s\"", "intervall = \"1s\""));
    assert!(e.contains("unknown field `intervall`"), "{e}");
    assert!(e.starts_with("line 8"), "{e}");
    let e = err(&format!(
        "{MINIMAL}\n[deploy]\nmax_surge = 1\nmin_health_time = \"1s\"\n"
    ));
    assert!(e.contains("unknown field `min_health_time`"), "{e}");
}

#[test]
fn negative_and_too_large_count() {
    let e = err(&MINIMAL.replace("count = 3", "count = -1"));
    assert!(
        e.contains("`count` = -1 must not be negative") && e.starts_with("line 3"),
        "{e}"
    );
    let e = parse_service_file(
        &MINIMAL.replace("count = 3", "count = 11"),
        Limits { max_count: 10 },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("above this cluster's maximum of 10"), "{e}");
}

#[test]
fn port_out_of_range() {
    let e = err(&MINIMAL.replace("port = 8080", "port = 70000"));
    assert!(e.contains("out of range") && e.starts_with("line 4"), "{e}");
    let e = err(&MINIMAL.replace("port = 8080", "ports = [80, 0]"));
    assert!(e.contains("out of range"), "{e}");
    let e = err(&MINIMAL.replace("port = 8080", "ports = [80, 80]"));
    assert!(e.contains("listed twice"), "{e}");
}

#[test]
fn health_checks_that_can_never_pass() {
    let e = err(&MINIMAL.replace("port = 8080\n", ""));
    assert!(e.contains("needs a `port`"), "{e}");
    let e = err(&MINIMAL.replace("http = \"/healthz\"", "http = \"healthz\""));
    assert!(e.contains("must be a path"), "{e}");
    let e = err(&MINIMAL.replace("interval = \"1s\"", "interval = \"1s\"\nport = 9999"));
    assert!(e.contains("could never pass"), "{e}");
    let e = err(&MINIMAL.replace("interval = \"1s\"", "interval = \"1s\"\ntcp = true"));
    assert!(e.contains("exactly one of"), "{e}");
    let e = err(&MINIMAL.replace("interval = \"1s\"", "timeout = \"0s\""));
    assert!(e.contains("can never pass"), "{e}");
}

#[test]
fn bad_values() {
    assert!(
        err(&MINIMAL.replace("interval = \"1s\"", "interval = \"soon\""))
            .contains("not a duration")
    );
    assert!(
        err(&format!("{MINIMAL}memory = \"lots\"\n").replace("[health]\n", "")).contains("memory")
    );
    assert!(
        err(&MINIMAL.replace("name = \"hello\"", "name = \"Hello World\""))
            .contains("service name")
    );
    assert!(
        err(&MINIMAL.replace("count = 3", "count = 3\nstop_signal = \"SIGFOO\""))
            .contains("stop_signal")
    );
    assert!(err(&MINIMAL.replace("count = 3", "count = 3\ncpu = 0")).contains("cpu"));
    assert!(err(&format!(
        "{MINIMAL}\n[placement]\nconstraints = [\"disk ssd\"]\n"
    ))
    .contains("constraint"));
    assert!(err(&format!(
        "{MINIMAL}\n[deploy]\nmax_surge = 0\nmax_unavailable = 0\n"
    ))
    .contains("never make progress"));
    assert!(err(&format!("{MINIMAL}\n[deploy]\nmax_surge = \"150%\"\n")).contains("above 100%"));
}

#[test]
fn a_port_without_health_gets_a_tcp_check_and_no_port_gets_none() {
    let spec = parse_service_file(
        "name = \"a\"\nimage = \"r/a:1\"\nport = 7000\n",
        Limits::default(),
    )
    .unwrap();
    let health = spec.health.expect("an implicit check");
    assert_eq!(health.kind, HealthKind::Tcp { port: 7000 });
    assert_eq!(
        health.interval_ms,
        pier_api::service::IMPLICIT_CHECK_INTERVAL_MS
    );
    let spec = parse_service_file("name = \"a\"\nimage = \"r/a:1\"\n", Limits::default()).unwrap();
    assert_eq!(spec.health, None, "nothing to check without a port");
}

#[test]
fn needs_are_normalised_and_checked() {
    let spec = parse_service_file(
        "name = \"web\"\nimage = \"r/a:1\"\nneeds = [\"db\", \"API\", \"db\"]\n",
        Limits::default(),
    )
    .unwrap();
    assert_eq!(spec.needs, vec!["api".to_string(), "db".to_string()]);
    assert!(err("name = \"web\"\nimage = \"r/a:1\"\nneeds = [\"web\"]\n").contains("itself"));
    assert!(err("name = \"web\"\nimage = \"r/a:1\"\nneeds = [\"a b\"]\n").starts_with("line 3"));
}

#[test]
fn deploy_security_settings() {
    let spec = parse_service_file(
        "name = \"a\"\nimage = \"r/a:1\"\n[deploy]\nuser = \"1000:1000\"\nread_only_root = true\ncap_drop = [\"cap_net_raw\", \"ALL\"]\n",
        Limits::default(),
    )
    .unwrap();
    assert_eq!(spec.deploy.user.as_deref(), Some("1000:1000"));
    assert!(spec.deploy.read_only_root);
    assert_eq!(
        spec.deploy.cap_drop,
        vec!["ALL".to_string(), "NET_RAW".into()]
    );
    let defaults = parse_service_file(MINIMAL, Limits::default()).unwrap();
    assert_eq!(defaults.deploy.user, None);
    assert!(!defaults.deploy.read_only_root);
    assert!(defaults.deploy.cap_drop.is_empty());
    assert!(
        err("name = \"a\"\nimage = \"r/a:1\"\n[deploy]\nuser = \"a b\"\n").starts_with("line 4")
    );
    assert!(
        err("name = \"a\"\nimage = \"r/a:1\"\n[deploy]\ncap_drop = [\"net-raw\"]\n")
            .contains("capability")
    );
}

#[test]
fn old_specs_without_the_new_fields_still_read() {
    let spec = parse_service_file(MINIMAL, Limits::default()).unwrap();
    let mut json = serde_json::to_value(&spec).unwrap();
    json.as_object_mut().unwrap().remove("needs");
    for k in ["user", "read_only_root", "cap_drop"] {
        json["deploy"].as_object_mut().unwrap().remove(k);
    }
    let back: pier_api::service::ServiceSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn a_pinned_image_runs_by_digest_alone() {
    let mut spec = parse_service_file(MINIMAL, Limits::default()).unwrap();
    assert_eq!(spec.pinned_image, None);
    assert_eq!(spec.run_image(), "127.0.0.1:5000/hello:v1");
    let digest = format!("sha256:{}", "ab".repeat(32));
    spec.pinned_image = Some(format!("127.0.0.1:5000/hello:v1@{digest}"));
    assert_eq!(spec.run_image(), format!("127.0.0.1:5000/hello@{digest}"));
    // A registry port is not a tag.
    spec.pinned_image = Some(format!("127.0.0.1:5000/team/hello@{digest}"));
    assert_eq!(
        spec.run_image(),
        format!("127.0.0.1:5000/team/hello@{digest}")
    );
    // Unknown to older servers' records: absent is None, and None is not written.
    let json =
        serde_json::to_value(parse_service_file(MINIMAL, Limits::default()).unwrap()).unwrap();
    assert!(json.get("pinned_image").is_none());
}

#[test]
fn https_redirect_and_hsts_on_the_route() {
    let spec = parse_service_file(MINIMAL, Limits::default()).unwrap();
    assert!(!spec.https_redirect && !spec.hsts);
    let text = format!("https = \"redirect\"\nhsts = true\n{MINIMAL}");
    let spec = parse_service_file(&text, Limits::default()).unwrap();
    assert!(spec.https_redirect && spec.hsts);
    let e = err(&format!("https = \"always\"\n{MINIMAL}"));
    assert!(e.contains("`https` = \"always\" is not supported"), "{e}");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn secrets_as_variables_and_files() {
    let spec = parse_service_file(
        "name = \"web\"\nimage = \"x\"\nsecret_files = [\"tls-key\", \"db-password\", \"tls-key\"]\n[env]\nMODE = \"prod\"\n[secrets]\nDB_PASSWORD = \"db-password\"\n",
        Limits::default(),
    )
    .unwrap();
    assert_eq!(spec.secrets["DB_PASSWORD"], "db-password");
    assert_eq!(spec.secret_files, vec!["db-password", "tls-key"]);
    assert_eq!(
        spec.secret_names().into_iter().collect::<Vec<_>>(),
        vec!["db-password", "tls-key"]
    );
    assert!(spec.secret_versions.is_empty(), "recorded by the server");

    let e = err("name = \"web\"\nimage = \"x\"\n[env]\nDB = \"1\"\n[secrets]\nDB = \"db\"\n");
    assert!(e.contains("also set in [env]"), "{e}");
    assert!(e.starts_with("line 5"), "{e}");
    let e = err("name = \"web\"\nimage = \"x\"\n[secrets]\nDB = \"Bad_Name\"\n");
    assert!(e.contains("secret name \"Bad_Name\""), "{e}");
    let e = err("name = \"web\"\nimage = \"x\"\n[secrets]\n1DB = \"db\"\n");
    assert!(e.contains("not an environment variable name"), "{e}");
    let e = err("name = \"web\"\nimage = \"x\"\nsecret_files = [\"../etc\"]\n");
    assert!(e.starts_with("line 3") && e.contains("\"../etc\""), "{e}");
}

#[test]
fn env_file_variables_lose_to_env_and_secrets() {
    use pier_api::service::merge_env_file;
    use std::collections::BTreeMap;
    let text = "name = \"web\"\nimage = \"x\"\nenv_file = \"app.env\"\n[env]\nMODE = \"prod\"\n[secrets]\nTOKEN = \"tok\"\n";
    let mut spec = parse_service_file(text, Limits::default()).unwrap();
    assert_eq!(spec.env_file.as_deref(), Some("app.env"));
    let vars = BTreeMap::from([
        ("MODE".to_string(), "dev".to_string()),
        ("LEVEL".to_string(), "debug".to_string()),
        ("TOKEN".to_string(), "plain".to_string()),
    ]);
    merge_env_file(&mut spec, Some(vars.clone())).unwrap();
    assert_eq!(spec.env["MODE"], "prod", "[env] wins");
    assert_eq!(spec.env["LEVEL"], "debug");
    assert!(!spec.env.contains_key("TOKEN"), "a secret wins too");

    let mut spec = parse_service_file(text, Limits::default()).unwrap();
    let e = merge_env_file(&mut spec, None).unwrap_err().to_string();
    assert!(e.contains("pier deploy"), "{e}");
    let mut plain = parse_service_file(MINIMAL, Limits::default()).unwrap();
    assert!(merge_env_file(&mut plain, Some(vars)).is_err());
    let e = err("name = \"web\"\nimage = \"x\"\nenv_file = \" \"\n");
    assert!(e.starts_with("line 3") && e.contains("empty"), "{e}");
}

#[test]
fn volumes_of_each_kind_and_what_is_refused() {
    use pier_api::service::{is_under, VolumeSpec};
    let spec = parse_service_file(
        "name = \"db\"\nimage = \"x\"\n[[volumes]]\nname = \"db-data\"\ntarget = \"/var/lib/db/\"\n[[volumes]]\nsource = \"/srv/conf\"\ntarget = \"/conf\"\nread_only = true\n[[volumes]]\ntmpfs = true\ntarget = \"/tmp\"\nsize = \"64MiB\"\n",
        Limits::default(),
    )
    .unwrap();
    assert_eq!(
        spec.volumes,
        vec![
            VolumeSpec::Named {
                name: "db-data".into(),
                target: "/var/lib/db".into(),
                read_only: false
            },
            VolumeSpec::Host {
                source: "/srv/conf".into(),
                target: "/conf".into(),
                read_only: true
            },
            VolumeSpec::Tmpfs {
                target: "/tmp".into(),
                size_mb: Some(64)
            },
        ]
    );
    let base = "name = \"db\"\nimage = \"x\"\n";
    for (volume, want) in [
        ("name = \"d\"\n", "`target`"),
        ("name = \"d\"\ntarget = \"data\"\n", "absolute path"),
        ("name = \"d\"\ntarget = \"/a/../etc\"\n", "absolute path"),
        ("target = \"/d\"\n", "exactly one of"),
        (
            "name = \"d\"\nsource = \"/x\"\ntarget = \"/d\"\n",
            "exactly one of",
        ),
        (
            "source = \"relative\"\ntarget = \"/d\"\n",
            "absolute host path",
        ),
        ("source = \"/\"\ntarget = \"/d\"\n", "absolute host path"),
        ("name = \"Bad\"\ntarget = \"/d\"\n", "volume name"),
        (
            "name = \"d\"\ntarget = \"/d\"\nsize = 5\n",
            "only for `tmpfs",
        ),
        ("tmpfs = true\ntarget = \"/d\"\nsize = \"lots\"\n", "`size`"),
        (
            "tmpfs = true\ntarget = \"/d\"\nread_only = true\n",
            "makes no sense",
        ),
    ] {
        let e = err(&format!("{base}[[volumes]]\n{volume}"));
        assert!(e.contains(want), "{volume:?}: {e}");
        assert!(e.starts_with("line 3"), "{volume:?}: {e}");
    }
    let e = err(&format!(
        "{base}[[volumes]]\nname = \"a\"\ntarget = \"/d\"\n[[volumes]]\ntmpfs = true\ntarget = \"/d/\"\n"
    ));
    assert!(
        e.contains("mounted twice") && e.starts_with("line 6"),
        "{e}"
    );
    let e = err(
        "name = \"db\"\nimage = \"x\"\nsecret_files = [\"k\"]\n[[volumes]]\ntmpfs = true\ntarget = \"/run/secrets\"\n",
    );
    assert!(e.contains("secret files"), "{e}");

    assert!(is_under("/srv/data/x", "/srv/data"));
    assert!(is_under("/srv/data", "/srv/data/"));
    assert!(!is_under("/srv/database", "/srv/data"));
    assert!(!is_under("/etc", "/srv"));
}

#[test]
fn files_are_parsed_with_defaults_and_bad_ones_refused_naming_file_and_line() {
    use pier_api::service::OnChange;
    let text = r#"name = "web"
image = "x"

[files]
"/etc/app/upstreams.conf" = '{{ range service "api" }}{{ .Address }}:{{ .Port }}{{ end }}'

[files."/etc/app/config.txt"]
template = '{{ key "app/config" }}'
on_change = "signal:hup"

[files."/etc/other/plain"]
template = "static"
on_change = "none"
"#;
    let spec = parse_service_file(text, Limits::default()).unwrap();
    let files: Vec<_> = spec
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.on_change.clone()))
        .collect();
    assert_eq!(
        files,
        vec![
            ("/etc/app/config.txt", OnChange::Signal("SIGHUP".into())),
            ("/etc/app/upstreams.conf", OnChange::Restart),
            ("/etc/other/plain", OnChange::None),
        ]
    );
    assert_eq!(spec.file_dirs(), vec!["/etc/app", "/etc/other"]);

    let with = |files: &str| format!("name = \"web\"\nimage = \"x\"\n\n[files]\n{files}");
    // A bad template: the error names the file, the template's line and the file's line.
    let e = err(&with(
        "\"/etc/app/a.conf\" = '''\nfirst line\nsecond {{ servce \"api\" }}\n'''\n",
    ));
    assert!(
        e.contains("line 5")
            && e.contains("\"/etc/app/a.conf\"")
            && e.contains("template line 2")
            && e.contains("unknown function"),
        "{e}"
    );
    let e = err(&with(
        "\"/etc/app/a.conf\" = '{{ range service \"api\" }}'\n",
    ));
    assert!(e.contains("not closed by `{{ end }}`"), "{e}");
    let e = err(&with("\"/a.conf\" = 'x'\n"));
    assert!(e.contains("put the file in a directory"), "{e}");
    let e = err(&with("\"etc/a.conf\" = 'x'\n"));
    assert!(e.contains("absolute file path"), "{e}");
    let e = err(&with("\"/etc/a/../b\" = 'x'\n"));
    assert!(e.contains("absolute file path"), "{e}");
    let e = err(&with(
        "\"/etc/app/a\" = { template = 'x', on_change = \"reload\" }\n",
    ));
    assert!(e.contains("`on_change` = \"reload\""), "{e}");
    let e = err(&with(
        "\"/etc/app/a\" = { template = 'x', on_chnage = \"none\" }\n",
    ));
    assert!(e.contains("unknown field `on_chnage`"), "{e}");
    let e = err(&with("\"/etc/app/a\" = 'x'\n\"/etc/app/sub/b\" = 'y'\n"));
    assert!(e.contains("inside /etc/app"), "{e}");
    let big = "x".repeat(64 * 1024 + 1);
    let e = err(&with(&format!("\"/etc/app/a\" = '{big}'\n")));
    assert!(e.contains("larger than 64 KiB"), "{e}");
    let many: String = (0..17)
        .map(|i| format!("\"/etc/app/f{i}\" = 'x'\n"))
        .collect();
    let e = err(&with(&many));
    assert!(e.contains("at most 16 files"), "{e}");
    let e = err(
        "name = \"web\"\nimage = \"x\"\n[[volumes]]\nname = \"data\"\ntarget = \"/etc/app\"\n\n[files]\n\"/etc/app/a\" = 'x'\n",
    );
    assert!(e.contains("overlaps the volume"), "{e}");
}
