//! `pier kv get|put|delete|ls`: the key/value store from the command line.

use std::process::ExitCode;

use pier_api::kv::{KvEntry, KvWriteResponse};

use crate::client::{decode, print_json, Client};

#[derive(clap::Args, Debug)]
pub struct KvArgs {
    #[command(subcommand)]
    pub command: KvCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum KvCommand {
    /// Print a key's value (exit code 2 when the key does not exist).
    Get {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a key. `--cas 0` writes only if the key is absent.
    Put {
        key: String,
        value: String,
        #[arg(long)]
        cas: Option<u64>,
        #[arg(long)]
        flags: Option<u64>,
    },
    /// Delete a key, or every key under a prefix with --recurse.
    Delete {
        key: String,
        #[arg(long)]
        recurse: bool,
        #[arg(long)]
        cas: Option<u64>,
    },
    /// List keys under a prefix.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
}

/// Keys go into the URL path; each segment is escaped so `a b/c?d` survives.
fn key_path(key: &str) -> String {
    let escaped: Vec<String> = key.split('/').map(escape_segment).collect();
    format!("/api/v1/kv/{}", escaped.join("/"))
}

fn escape_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn run(client: &Client, args: KvArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        KvCommand::Get { key, json } => {
            let resp = client
                .send(client.http().get(client.url(&key_path(&key))))
                .await?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                eprintln!("no such key: {key}");
                return Ok(ExitCode::from(2));
            }
            let entry: KvEntry = decode(resp).await?;
            if json {
                print_json(&entry)?;
            } else if let Some(text) = entry.value {
                println!("{text}");
            } else if let Some(b64) = entry.value_base64 {
                println!("{b64}");
            }
        }
        KvCommand::Put {
            key,
            value,
            cas,
            flags,
        } => {
            let mut path = key_path(&key);
            let mut sep = '?';
            if let Some(cas) = cas {
                path.push_str(&format!("{sep}cas={cas}"));
                sep = '&';
            }
            if let Some(flags) = flags {
                path.push_str(&format!("{sep}flags={flags}"));
            }
            let resp: KvWriteResponse = client.put_bytes(&path, value.into_bytes()).await?;
            if !resp.written {
                eprintln!("not written: the cas index did not match (key changed or exists)");
                return Ok(ExitCode::from(3));
            }
        }
        KvCommand::Delete { key, recurse, cas } => {
            let mut path = key_path(&key);
            if recurse {
                path.push_str("?recurse=true");
            } else if let Some(cas) = cas {
                path.push_str(&format!("?cas={cas}"));
            }
            let resp: KvWriteResponse = client.delete(&path).await?;
            if !resp.written {
                eprintln!("not deleted: the cas index did not match");
                return Ok(ExitCode::from(3));
            }
        }
        KvCommand::Ls { prefix, json } => {
            let path = format!("{}?recurse=true", key_path(&prefix));
            let entries: Vec<KvEntry> = client.get(&path).await?;
            if json {
                print_json(&entries)?;
            } else {
                for e in entries {
                    println!("{}", e.key);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
