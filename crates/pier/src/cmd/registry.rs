//! `pier registry`: the OCI registry on its own, and `pier registry gc`.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RegistryArgs {}

impl RegistryArgs {
    pub fn is_server(&self) -> bool {
        true
    }
}

pub async fn run(_args: RegistryArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the registry is not built yet")
}
