//! `weft-control`: the control plane's server binary.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "weft-control", version, about = "The Weft control plane")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("the control plane's servers are not built yet; see the README's status section")
}
