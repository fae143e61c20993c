//! `titan-operator` binary: `crd` prints the CRD YAML, `run` starts the controller.

use clap::{Parser, Subcommand};
use titan_operator::crd::crd_yaml;

/// Command line of the operator.
#[derive(Parser, Debug)]
#[command(
    name = "titan-operator",
    version,
    about = "Kubernetes operator for Titan clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the TitanCluster CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
    }
}
