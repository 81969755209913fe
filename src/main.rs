//! The `folio` binary: parse the command line, start telemetry, run.

use anyhow::Context;
use clap::{Parser, Subcommand};
use folio::config::ServeConfig;

/// Folio: a collaborative text-editing server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeConfig),
    /// Mint an access token (signed with --auth-secret) and print it.
    Token(folio::auth::TokenArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    folio::telemetry::init();
    match cli.command {
        Command::Serve(config) => serve(config),
        Command::Token(args) => {
            println!("{}", args.mint().map_err(anyhow::Error::msg)?);
            Ok(())
        }
    }
}

fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        folio::server::run(listener, config, folio::server::shutdown_signal())
            .await
            .context("folio serve")
    })
}
