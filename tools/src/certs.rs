//! `corral certs`: TLS material for a real cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use corral_wire::tls::{self, Usage};

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertsCommand {
    /// Create a new cluster CA plus one master and one agent certificate in DIR
    /// (ca.pem, ca-key.pem, master.pem, master-key.pem, agent.pem, agent-key.pem).
    Init {
        /// Output directory (created; existing files are not overwritten).
        #[arg(long)]
        dir: PathBuf,
        /// Names (DNS or IP) agents use to reach the master; repeatable. `localhost` and
        /// `127.0.0.1` are always included.
        #[arg(long = "master-name")]
        master_names: Vec<String>,
    },
    /// Issue another certificate from the CA in DIR (for one more master or agent).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// `master` (server and client) or `agent` (client).
        #[arg(long, value_parser = ["master", "agent"])]
        kind: String,
        /// File name stem: writes NAME.pem and NAME-key.pem.
        #[arg(long)]
        name: String,
        /// Names (DNS or IP) in the certificate; repeatable.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertsCommand::Init { dir, master_names } => {
            if dir.join("ca.pem").exists() {
                anyhow::bail!("{} already holds a CA; refusing to overwrite it", dir.display());
            }
            let mut names = master_names;
            for n in ["localhost", "127.0.0.1"] {
                if !names.iter().any(|x| x == n) {
                    names.push(n.into());
                }
            }
            tls::write_cluster(&dir, &names)?;
            println!("wrote ca, master and agent certificates to {}", dir.display());
            println!("master: corral master --tls-dir {}", dir.display());
            println!("agent:  corral agent --tls-dir {} --master HOST:5050", dir.display());
        }
        CertsCommand::Issue { dir, kind, name, sans } => {
            let ca = tls::read_pair(&dir.join("ca.pem"), &dir.join("ca-key.pem"))
                .with_context(|| format!("reading the CA in {}", dir.display()))?;
            let usage = if kind == "master" { Usage::Master } else { Usage::Agent };
            let sans = if sans.is_empty() { vec![name.clone()] } else { sans };
            let pair = tls::issue(&ca, usage, &sans)?;
            tls::write_pair(&dir, &name, &pair)?;
            println!("wrote {0}/{1}.pem and {0}/{1}-key.pem", dir.display(), name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
