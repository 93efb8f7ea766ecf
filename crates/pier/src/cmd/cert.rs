//! `pier cert add HOST --cert F --key F | ls | rm HOST`: the gateways' TLS certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pier_api::cert::{CertAddRequest, CertView};

use crate::certs::utc_date as date;
use crate::client::{print_json, Client};

#[derive(clap::Args, Debug)]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: CertCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CertCommand {
    /// Store a certificate for HOST; every gateway serves it over HTTPS within a second.
    Add {
        /// Host name (`*.example.com` for a wildcard).
        host: String,
        /// PEM certificate chain, leaf first.
        #[arg(long)]
        cert: PathBuf,
        /// PEM private key of the leaf.
        #[arg(long)]
        key: PathBuf,
    },
    /// Stored certificates: host, issuer, expiry, source, last error (never keys).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove the certificate of HOST.
    Rm { host: String },
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))
}

pub async fn run(client: &Client, args: CertArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertCommand::Add { host, cert, key } => {
            let req = CertAddRequest {
                host,
                cert_pem: read(&cert, "certificate")?,
                key_pem: read(&key, "key")?,
            };
            let v: CertView = client.post_json("/api/v1/certs", &req).await?;
            println!(
                "certificate for {} stored (issuer {}, expires {}{})",
                v.host,
                v.issuer,
                date(v.not_after),
                if v.key_sealed {
                    ", key sealed"
                } else {
                    "; key stored unsealed: this cluster has no server secret"
                }
            );
            if let Some(problem) = &v.last_error {
                eprintln!("warning: {}: {problem}", v.host);
            }
        }
        CertCommand::Ls { json } => {
            let certs: Vec<CertView> = client.get("/api/v1/certs").await?;
            if json {
                print_json(&certs)?;
            } else {
                println!(
                    "{:<32} {:<24} {:<32} {:<10} LAST ERROR",
                    "HOST", "EXPIRES", "ISSUER", "SOURCE"
                );
                for c in certs {
                    println!(
                        "{:<32} {:<24} {:<32} {:<10} {}",
                        c.host,
                        if c.not_after == 0 {
                            "-".to_string()
                        } else {
                            date(c.not_after)
                        },
                        if c.issuer.is_empty() { "-" } else { &c.issuer },
                        c.source,
                        c.last_error.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        CertCommand::Rm { host } => {
            let _: serde_json::Value = client.delete(&format!("/api/v1/certs/{host}")).await?;
            println!("certificate for {host} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
