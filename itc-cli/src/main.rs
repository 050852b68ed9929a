//! `itc`: the ITC command line for people. Tasks as a table or a live view, events as
//! lines or JSON lines, and the steering verbs (coordinate, interrupt, resume, cancel,
//! answer), over the `itc-client` SDK.
//!
//! Layout: `cli.rs` (flags and help), `commands.rs` (one function per verb), `live.rs`
//! (`status --watch`), `render.rs` (tables, colours, JSON shapes), `error.rs` (exit codes).

mod cli;
mod commands;
mod error;
mod live;
mod render;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, ColorWhen};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    anstream::ColorChoice::write_global(match cli.color {
        ColorWhen::Auto => anstream::ColorChoice::Auto,
        ColorWhen::Always => anstream::ColorChoice::Always,
        ColorWhen::Never => anstream::ColorChoice::Never,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&CliError::Io(e)),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`itc watch | head`) is not an error.
        Err(CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &CliError) -> ExitCode {
    let style = anstyle::Style::new()
        .fg_color(Some(anstyle::AnsiColor::Red.into()))
        .bold();
    let _ = writeln!(anstream::stderr(), "{style}itc:{style:#} {error}");
    error.exit_code()
}
