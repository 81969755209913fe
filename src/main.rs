//! The `folio` binary: parse the command line, start telemetry, run the
//! server or one offline command (see [`folio::cli`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use folio::cli::{self, DataDir, ExportFormat, ImportFormat};
use folio::config::{RetentionArgs, ServeConfig};

/// Folio: a collaborative text-editing server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per process: the size of the `Serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the server.
    Serve(ServeConfig),
    /// Mint an access token (signed with --auth-secret) and print it.
    Token(folio::auth::mint::TokenArgs),
    /// Revoke a token (--jti) or a user's tokens (--sub) on a running server.
    Revoke(folio::remote::RevokeArgs),
    /// List the documents of a data dir.
    Docs {
        #[command(flatten)]
        dir: DataDir,
        /// Only ids starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a document (latest, a version, or as of a time) to stdout or a file.
    Export {
        #[command(flatten)]
        dir: DataDir,
        doc: String,
        /// A version id (see `folio history`).
        #[arg(long, conflicts_with = "at")]
        version: Option<u64>,
        /// A time: milliseconds since the epoch or RFC 3339.
        #[arg(long)]
        at: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Create a document from a text file or a Yjs update.
    Import {
        #[command(flatten)]
        dir: DataDir,
        doc: String,
        file: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: ImportFormat,
        /// The author recorded for the import.
        #[arg(long, default_value = "import")]
        author: String,
    },
    /// A document's versions and log size.
    History {
        #[command(flatten)]
        dir: DataDir,
        doc: String,
        #[arg(long)]
        json: bool,
    },
    /// Play a document's history as a time-lapse in the terminal.
    Replay {
        #[command(flatten)]
        dir: DataDir,
        doc: String,
        /// Times real time; 0 plays without pauses.
        #[arg(long, default_value_t = 10.0)]
        speed: f64,
        /// Start at this seq.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// End at this seq (default: the latest).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Apply the retention policy (thin versions, merge old log entries).
    Compact {
        #[command(flatten)]
        dir: DataDir,
        /// One document (default: all).
        doc: Option<String>,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Check that every document rebuilds consistently; print sizes.
    Check {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        json: bool,
    },
    /// Rewrite the data dir into a fresh one, giving back the space of
    /// replaced records (no server may hold it; needs disk for a second copy).
    Vacuum {
        #[command(flatten)]
        dir: DataDir,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    folio::telemetry::init();
    let result = match cli.command {
        Command::Serve(config) => return exit(serve(config)),
        Command::Token(args) => {
            return exit(
                args.mint()
                    .map(|(token, jti)| {
                        // stdout stays the token alone, for `TOKEN=$(folio token …)`.
                        eprintln!("jti: {jti}");
                        println!("{token}");
                    })
                    .map_err(anyhow::Error::msg),
            );
        }
        Command::Revoke(args) => return exit(revoke(&args)),
        Command::Docs { dir, prefix, json } => cli::docs(&dir, &prefix, json).map(print),
        Command::Export {
            dir,
            doc,
            version,
            at,
            format,
            out,
        } => cli::export(&dir, &doc, version, at.as_deref(), format).and_then(|bytes| match out {
            Some(path) => std::fs::write(&path, bytes).map_err(|source| cli::CliError::Io {
                path: path.display().to_string(),
                source,
            }),
            None => std::io::stdout()
                .write_all(&bytes)
                .map_err(|source| cli::CliError::Io {
                    path: "stdout".to_owned(),
                    source,
                }),
        }),
        Command::Import {
            dir,
            doc,
            file,
            format,
            author,
        } => cli::import(&dir, &doc, &file, format, &author).map(print),
        Command::History { dir, doc, json } => cli::history(&dir, &doc, json).map(print),
        Command::Replay {
            dir,
            doc,
            speed,
            from,
            to,
        } => cli::replay(&dir, &doc, speed, from, to, &mut std::io::stdout().lock()),
        Command::Compact {
            dir,
            doc,
            retention,
        } => cli::compact(&dir, doc.as_deref(), &retention).map(print),
        Command::Check { dir, json } => cli::check(&dir, json, &mut std::io::stdout().lock()),
        Command::Vacuum { dir } => cli::vacuum(&dir).map(print),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("folio: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(s: String) {
    print!("{s}");
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("folio: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn revoke(args: &folio::remote::RevokeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let answer = runtime.block_on(folio::remote::revoke(args))?;
    print!("{answer}");
    Ok(())
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
