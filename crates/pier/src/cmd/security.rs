//! `pier acl ...`, `pier token ...`, `pier audit`: API tokens, join tokens and the audit log.

use std::process::ExitCode;
use std::time::Duration;

use pier_api::security::{
    AuditEntry, CaRotated, CaRotationInfo, CaStatus, CreateJoinToken, CreateToken,
    CreatedJoinToken, CreatedToken, JoinTokenInfo, RotateCa, TokenInfo,
};

use crate::client::{decode, print_json, Client};

#[derive(clap::Args, Debug)]
pub struct AclArgs {
    #[command(subcommand)]
    pub action: AclAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum AclAction {
    /// Make the management token, once per cluster (a cluster made by `pier server` has one
    /// already, in the first server's DATA_DIR/tls/management.token).
    Bootstrap {
        /// The server join token (DATA_DIR/tls/server.token on any server).
        #[arg(long, env = "PIER_SERVER_TOKEN")]
        server_token: String,
        #[arg(long)]
        json: bool,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        action: AclTokenAction,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AclTokenAction {
    /// Make a token. Policies: management, read, deploy:PATTERNS, pipeline:PATTERNS,
    /// registry:pull:PATTERNS, registry:push:PATTERNS, kv:read:PREFIXES, kv:write:PREFIXES,
    /// catalog:register:PATTERNS (a pattern ending in * is a prefix).
    Create {
        #[arg(long = "policy", required = true)]
        policies: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime (e.g. 1h); none: until revoked.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (accessors and policies, never secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its accessor: it stops working on every server at once.
    Revoke { accessor: String },
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenAction {
    /// A join token for more servers, agents or standalone gateways (a gateway token can add
    /// only gateways).
    Create {
        #[arg(long, value_parser = ["agent", "server", "gateway"])]
        role: String,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        json: bool,
    },
    /// List the join tokens made with `pier token create` (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token by id.
    Revoke { id: String },
    /// Print a new bootstrap secret for servers started together
    /// (`pier server --bootstrap-expect 3 --token <it>` on each); no server is asked.
    Generate,
}

#[derive(clap::Args, Debug)]
pub struct CaArgs {
    #[command(subcommand)]
    pub action: CaAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum CaAction {
    /// Replace the cluster CA. Every server and agent trusts both CAs during the overlap,
    /// switches to a certificate from the new one after the first quarter of it (at least
    /// 15 s, at most 1 h), and drops the old CA at its end. Prints the join tokens for the new
    /// CA (same secrets; tokens with the old hash work until the old CA is dropped).
    Rotate {
        /// How long the old CA stays trusted (at least 45s).
        #[arg(long, default_value = "24h")]
        overlap: String,
        #[arg(long)]
        json: bool,
    },
    /// The CA that signs now, the CAs trusted now, and the latest rotation.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn print_rotation(r: &CaRotationInfo) {
    println!("rotation {}:", r.generation);
    println!("  new CA:            {}", r.new_fingerprint);
    println!("  old CA:            {}", r.old_fingerprint);
    println!("  started:           {}", unix_time(r.started_at));
    println!(
        "  certificates from: {} (new CA signs)",
        unix_time(r.switch_at)
    );
    println!("  old CA dropped:    {}", unix_time(r.old_dropped_at));
}

pub async fn ca(client: &Client, args: CaArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        CaAction::Rotate { overlap, json } => {
            let done: CaRotated = client
                .post_json("/api/v1/ca/rotate", &RotateCa { overlap })
                .await?;
            if json {
                print_json(&done)?;
            } else {
                print_rotation(&done.rotation);
                println!("server join token: {}", done.server_token);
                if let Some(agent) = &done.agent_token {
                    println!("agent join token:  {agent}");
                }
                println!("(tokens with the old CA hash work until the old CA is dropped; clients that trust DATA_DIR/tls/ca.crt need its new copy before then)");
            }
        }
        CaAction::Status { json } => {
            let st: CaStatus = client.get("/api/v1/ca").await?;
            if json {
                print_json(&st)?;
            } else {
                println!("signing CA: {}", st.active_fingerprint);
                println!("trusted:    {}", st.trusted_fingerprints.join(", "));
                if let Some(r) = &st.rotation {
                    print_rotation(r);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// Only lines newer than this (e.g. 1h, 30m).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// Keep printing new lines as they come.
    #[arg(short, long)]
    pub follow: bool,
}

pub async fn acl(client: &Client, args: AclArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        AclAction::Bootstrap { server_token, json } => {
            let made: CreatedToken = client
                .post_json(
                    "/api/v1/acl/bootstrap",
                    &serde_json::json!({ "server_token": server_token }),
                )
                .await?;
            print_created(&made, json)
        }
        AclAction::Token { action } => acl_token(client, action).await,
    }
}

fn print_created(made: &CreatedToken, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(made)?;
    } else {
        println!("accessor: {}", made.info.accessor);
        println!("secret:   {}", made.secret);
        println!("policies: {}", made.info.policies.join(", "));
        println!("(the secret is shown only now; use it as PIER_TOKEN)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn acl_token(client: &Client, action: AclTokenAction) -> anyhow::Result<ExitCode> {
    match action {
        AclTokenAction::Create {
            policies,
            description,
            ttl,
            json,
        } => {
            let made: CreatedToken = client
                .post_json(
                    "/api/v1/acl/tokens",
                    &CreateToken {
                        description,
                        policies,
                        ttl,
                    },
                )
                .await?;
            print_created(&made, json)
        }
        AclTokenAction::Ls { json } => {
            let list: Vec<TokenInfo> = client.get("/api/v1/acl/tokens").await?;
            if json {
                print_json(&list)?;
            } else {
                println!("{:<38} {:<40} DESCRIPTION", "ACCESSOR", "POLICIES");
                for t in &list {
                    println!(
                        "{:<38} {:<40} {}",
                        t.accessor,
                        t.policies.join(","),
                        t.description
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AclTokenAction::Revoke { accessor } => {
            let resp = client
                .send(
                    client
                        .http()
                        .delete(client.url(&format!("/api/v1/acl/tokens/{accessor}"))),
                )
                .await?;
            if !resp.status().is_success() {
                decode::<serde_json::Value>(resp).await?;
            }
            println!("revoked {accessor}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn token(client: &Client, args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        TokenAction::Generate => {
            println!(
                "{}",
                pier_security::token::JoinToken::new(None, pier_security::token::generate_secret())
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenAction::Create {
            role,
            ttl,
            description,
            json,
        } => {
            let made: CreatedJoinToken = client
                .post_json(
                    "/api/v1/join-tokens",
                    &CreateJoinToken {
                        role,
                        ttl,
                        description,
                    },
                )
                .await?;
            if json {
                print_json(&made)?;
            } else {
                println!("{}", made.token);
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenAction::Ls { json } => {
            let list: Vec<JoinTokenInfo> = client.get("/api/v1/join-tokens").await?;
            if json {
                print_json(&list)?;
            } else {
                println!("{:<38} {:<7} {:<14} DESCRIPTION", "ID", "ROLE", "EXPIRES");
                for t in &list {
                    let expires = t
                        .expires_at_ms
                        .map(|ms| {
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + Duration::from_millis(ms),
                            )
                            .to_string()
                        })
                        .unwrap_or_else(|| "never".into());
                    println!(
                        "{:<38} {:<7} {:<14} {}",
                        t.id, t.role, expires, t.description
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenAction::Revoke { id } => {
            let resp = client
                .send(
                    client
                        .http()
                        .delete(client.url(&format!("/api/v1/join-tokens/{id}"))),
                )
                .await?;
            if !resp.status().is_success() {
                decode::<serde_json::Value>(resp).await?;
            }
            println!("revoked join token {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn audit(client: &Client, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let since_ms = match &args.since {
        Some(s) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| anyhow::anyhow!("--since {s:?}: {e} (e.g. 1h, 30m)"))?;
            pier_api::time::now_ms().saturating_sub(d.as_millis() as u64)
        }
        None => 0,
    };
    let mut since = since_ms;
    let mut index: Option<u64> = None;
    loop {
        let mut path = format!("/api/v1/audit?since_ms={since}");
        if let Some(i) = index {
            path.push_str(&format!("&index={i}&wait=60s"));
        }
        let resp = client.send(client.http().get(client.url(&path))).await?;
        let next_index = resp
            .headers()
            .get(crate::api::kv::INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let lines: Vec<AuditEntry> = decode(resp).await?;
        for l in &lines {
            if args.json {
                println!("{}", serde_json::to_string(l)?);
            } else {
                let at = humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(l.at_ms),
                );
                println!(
                    "{at} {:<44} {:<6} {:<40} {} ({})",
                    l.who, l.method, l.path, l.status, l.server
                );
            }
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(last) = lines.last() {
            since = last.at_ms + 1;
        }
        index = next_index;
    }
}
