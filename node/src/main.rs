//! The `chatmesh` binary: parse the command line, load the config, run a node.

use std::path::PathBuf;
use std::process::ExitCode;

use chatmesh::config::{Config, LogFormat};
use clap::Parser;

/// A distributed WebSocket chat node. Configuration: defaults, then the TOML
/// file, then CHATMESH_<SECTION>__<KEY> environment variables.
#[derive(Parser, Debug)]
#[command(name = "chatmesh", version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "CHATMESH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Check the configuration (file and environment), print it with its
    /// secrets as `***`, and exit.
    #[arg(long)]
    check_config: bool,
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(chatmesh::redact::Redacting::new(config.secrets()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chatmesh: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        // Secrets are shown as `***` (PROTOCOL.md §5): the output gets pasted.
        match serde_json::to_string_pretty(&config.redacted()) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("chatmesh: {e}"),
        }
        return ExitCode::SUCCESS;
    }
    init_tracing(&config);
    let metrics = chatmesh::server::install_metrics();
    let result = actix_rt::System::new().block_on(chatmesh::server::run(config, metrics));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatmesh: {e:#}");
            ExitCode::from(1)
        }
    }
}
