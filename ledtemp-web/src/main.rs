//! The `ledtemp-web` command: `ledtemp-web serve` runs the server.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ledtemp_web::{DemoArgs, ServeArgs};
use tracing_subscriber::EnvFilter;

/// ledtemp server: verifies sealed MQTT frames from ledtemp devices, stores them in SQLite and
/// serves the dashboard, a JSON API, Server-Sent Events, /healthz and /metrics.
///
/// Log level: RUST_LOG (e.g. RUST_LOG=ledtemp_web=debug); default info (rumqttd: warn).
#[derive(Debug, Parser)]
#[command(name = "ledtemp-web", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: subscribe to the broker, verify and store frames, serve HTTP.
    ///
    /// Settings come from flags, then LEDTEMP_* environment variables, then the --config TOML
    /// file, then the defaults (which work on one machine). Without a broker to connect to,
    /// --embedded-broker runs one inside the server.
    Serve(Box<ServeArgs>),
    /// Run everything in one process, nothing to install: an embedded MQTT broker, three
    /// simulated devices with fresh keys, a forger whose frames are refused, the server on a
    /// temporary SQLite file, and the dashboard. Prints the dashboard's URL.
    Demo(DemoArgs),
    /// Read the dashboard password from standard input (asked twice, without echo, on a
    /// terminal) and print its Argon2id hash for [auth] password_hash or password_hash_file.
    HashPassword,
    /// Print a new random API token for scripts and scrapers (sent as Authorization: Bearer
    /// TOKEN) and its SHA-256 hash for [auth] token_hashes.
    NewToken,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colour only for a terminal: a log file or a pipe gets plain text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ledtemp-web: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => ledtemp_web::serve(args.resolve()?).await,
            Command::Demo(args) => ledtemp_web::demo(args).await,
            Command::HashPassword => ledtemp_web::hash_password_command(),
            Command::NewToken => ledtemp_web::new_token_command(),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledtemp-web: {error}");
            ExitCode::FAILURE
        }
    }
}
