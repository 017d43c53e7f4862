//! The `hookwire` command line. Parsing only: each subcommand is a function
//! in `hookwire::commands`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use hookwire::{app::Role, commands, telemetry};

/// mimalloc instead of glibc malloc: the ingress hot path allocates per
/// request, and glibc's malloc/free showed up as ~10% of its CPU profile
/// (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hookwire",
    version,
    about = "Webhook broker: signed webhooks in, RabbitMQ in the middle, reliable delivery out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingress and/or the delivery workers until SIGTERM/SIGINT.
    Serve {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "config/hookwire.toml")]
        config: PathBuf,
        /// Which side to run; run each on its own to scale them separately.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
        /// Log format (level from RUST_LOG, default info).
        #[arg(long, value_enum, default_value_t = telemetry::LogFormat::Pretty, env = "HOOKWIRE_LOG_FORMAT")]
        log_format: telemetry::LogFormat,
    },
    /// Validate a config and print the RabbitMQ topology it declares (no broker needed).
    Check {
        #[arg(short, long, default_value = "config/hookwire.toml")]
        config: PathBuf,
    },
    /// Print the headers (or a curl command) of a validly signed request for a source.
    Sign {
        #[arg(short, long, default_value = "config/hookwire.toml")]
        config: PathBuf,
        /// Source name, as in [sources.NAME].
        #[arg(long)]
        source: String,
        /// File holding the request body to sign.
        #[arg(long)]
        body: PathBuf,
        /// Print a ready-to-run curl command instead of the headers.
        #[arg(long)]
        curl: bool,
        /// Event id to sign with, where the scheme carries one (default: a fresh msg_ id).
        #[arg(long)]
        id: Option<String>,
        /// Extra header for the curl command, e.g. -H 'X-GitHub-Event: push' (repeatable).
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// List subscriptions with queue depths and circuit state (operator API).
    Subscriptions {
        /// The admin listener of any hookwire process.
        #[arg(long, default_value = "http://127.0.0.1:9090", env = "HOOKWIRE_ADMIN_URL")]
        admin_url: String,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a debug destination that prints every webhook it receives.
    Sink {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, role, log_format } => commands::serve(&config, role, log_format),
        Command::Check { config } => commands::check(&config),
        Command::Sign { config, source, body, curl, id, headers } => {
            commands::sign(&config, &source, &body, curl, id, &headers)
        }
        Command::Sink { listen } => commands::sink(listen),
        Command::Subscriptions { admin_url, json } => {
            let token = std::env::var("HOOKWIRE_ADMIN_TOKEN").ok();
            commands::subscriptions(&admin_url, token.as_deref(), json)
        }
    }
}
