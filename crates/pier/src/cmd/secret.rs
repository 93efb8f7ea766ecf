//! `pier secret set NAME [--from-file F] | ls [--json] | rm NAME`: secrets that services use
//! as environment variables or files. A value goes in once and is never shown again.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use pier_api::secret::{check_secret, SecretInfo, SetSecretRequest, SetSecretResponse};

use crate::client::{decode, print_json, Client};

#[derive(clap::Args, Debug)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum SecretCommand {
    /// Store a secret (the value from --from-file, else standard input, byte for byte). A new
    /// value rolls out every service that uses the secret.
    Set {
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Secrets: name, version, size, when set, which services use them (never values).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret no service uses.
    Rm { name: String },
}

fn read_value(from_file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    match from_file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read the secret file {}", path.display())),
        None => {
            let mut value = Vec::new();
            std::io::stdin()
                .read_to_end(&mut value)
                .context("cannot read the secret from standard input")?;
            Ok(value)
        }
    }
}

/// `2026-12-07 13:40 UTC` from milliseconds since the epoch.
fn date_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

pub async fn run(client: &Client, args: SecretArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SecretCommand::Set { name, from_file } => {
            let value = read_value(from_file.as_ref())?;
            // Checked here too, so a bad name or size is refused before anything is sent.
            check_secret(&name, &value)?;
            let body = SetSecretRequest {
                value_base64: base64::engine::general_purpose::STANDARD.encode(&value),
            };
            let resp = client
                .send(
                    client
                        .http()
                        .put(client.url(&format!("/api/v1/secrets/{name}")))
                        .json(&body),
                )
                .await?;
            let resp: SetSecretResponse = decode(resp)
                .await
                .with_context(|| format!("secret {name} was not set"))?;
            println!(
                "secret {}: {} (version {}, {} bytes{})",
                resp.secret.name,
                resp.outcome,
                resp.secret.version,
                resp.secret.size_bytes,
                if resp.secret.sealed {
                    ", sealed"
                } else {
                    "; stored unsealed: this cluster has no server secret"
                }
            );
            for r in &resp.rolled {
                println!(
                    "rolling service {} to revision {} (deployment {})",
                    r.service,
                    r.revision,
                    r.deployment.as_deref().unwrap_or("-")
                );
            }
        }
        SecretCommand::Ls { json } => {
            let list: Vec<SecretInfo> = client.get("/api/v1/secrets").await?;
            if json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<32} {:>7} {:>8} {:<22} USED BY",
                    "NAME", "VERSION", "BYTES", "UPDATED"
                );
                for s in list {
                    println!(
                        "{:<32} {:>7} {:>8} {:<22} {}",
                        s.name,
                        s.version,
                        s.size_bytes,
                        date_ms(s.updated_at_ms),
                        if s.used_by.is_empty() {
                            "-".to_string()
                        } else {
                            s.used_by.join(", ")
                        }
                    );
                }
            }
        }
        SecretCommand::Rm { name } => {
            let _: SecretInfo = client.delete(&format!("/api/v1/secrets/{name}")).await?;
            println!("secret {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
