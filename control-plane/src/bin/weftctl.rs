//! `weftctl`: the operator's command line.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about = "Operate a Weft mesh")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("weftctl has no commands yet; see the README's status section")
}
