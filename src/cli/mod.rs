//! The `clawfarm` command line: a folder of thin verbs over the library. Each verb parses
//! its arguments (a clap `Args` struct in its own file), calls the library and prints.
//!
//! `main` → [`run`] → `ExitCode`. Errors are printed once, as the whole chain
//! (`error: outer: inner: cause`), by `main`; verbs never print an error and return it too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::desired::{self, Desired, ParamEnv};
use crate::driver::Driver;
use crate::driver::qemu::accel::AccelMode;
use crate::home::Home;
use crate::state::events::{Event, EventSink};
use crate::util::lock;

/// `println!` to stdout that returns an `io::Result` instead of panicking when stdout is a
/// closed pipe (`clawfarm events | head -1`); [`main`] ends quietly on that error.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` to stdout, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        write!(o, $($arg)*).and_then(|()| o.flush())
    }};
}

mod checkpoints;
mod events;
mod lifecycle;
mod logs;
mod manifests;
mod ps;
mod run;
mod store;
mod ui;
mod watch;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For machines (stdout holds exactly one JSON document).
    Json,
}

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON lines (for journald and friends).
    Json,
}

/// clawfarm: make this host's agent VMs match a folder of YAML manifests.
#[derive(Debug, Parser)]
#[command(name = "clawfarm", version, about, max_term_width = 100)]
pub struct Cli {
    /// Runtime root (default: $CLAWFARM_HOME, else /var/lib/clawfarm for root, else
    /// ~/.clawfarm).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Accelerator for VMs started by this command: auto (KVM when verified to work, else
    /// TCG), kvm or tcg.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CLAWFARM_ACCEL",
        value_name = "MODE"
    )]
    pub accel: Option<AccelMode>,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests and the clawspecs they reference (exit 0 valid, 1 invalid).
    Validate(manifests::ValidateArgs),
    /// Show what apply would change; changes nothing (exit 0 none, 2 pending, 1 error).
    Plan(manifests::PlanArgs),
    /// Make the host match the manifests, once (exit 0 all succeeded, 1 otherwise).
    Apply(manifests::ApplyArgs),
    /// List instances, including unhealthy and exited ones.
    Ps(ps::PsArgs),
    /// Stop an instance (graceful, then forced).
    Stop(lifecycle::StopArgs),
    /// Write an instance as a new .clawbox: its disk changes (scrubbed of secrets and
    /// per-instance state) as a layer over the same base image, with the same clawspec.
    Export(lifecycle::ExportArgs),
    /// Start a stopped instance.
    Start(lifecycle::StartArgs),
    /// Remove an instance (its volumes are kept unless --purge).
    Rm(lifecycle::RmArgs),
    /// Save a checkpoint of a running instance: RAM, devices, disk and volumes together.
    Checkpoint(checkpoints::CheckpointArgs),
    /// List the checkpoints of an instance (time, size of the saved VM state).
    Checkpoints(checkpoints::CheckpointsArgs),
    /// Put an instance back to a checkpoint, running.
    Restore(checkpoints::RestoreArgs),
    /// Save the running state of an instance and end its VM; start resumes it.
    Suspend(checkpoints::SuspendArgs),
    /// Volumes of an instance (export the files of one to the host).
    #[command(subcommand)]
    Volume(checkpoints::VolumeCommand),
    /// Write a new clawspec (and optionally a manifest using it): a terminal wizard, or
    /// flags with --non-interactive.
    #[command(after_long_help = crate::tui::wizard::EXAMPLES)]
    New(Box<crate::tui::wizard::NewArgs>),
    /// Print the JSON Schema of the manifest format (for editors).
    Schema,
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Import a bundle and run one new instance of it (import-first; each run gets its own
    /// CLAWID with NAME as the prefix). Goes through the same engine as apply.
    Run(run::RunArgs),
    /// Import a bundle into the store without running it (idempotent).
    Import(store::ImportArgs),
    /// List stored bundles and blobs, with sizes and the instances that use them.
    Images(store::ImagesArgs),
    /// Remove bundles and blobs that no instance uses (and leftovers of interrupted
    /// imports and downloads).
    Gc(store::GcArgs),
    /// Show the event log.
    Events(events::EventsArgs),
    /// Show an instance's logs: by default a summary (state, bootstrap phases, the end of
    /// the serial console).
    Logs(logs::LogsArgs),
    /// Log in to an instance as user claw over SSH, or run a command there
    /// (`clawfarm ssh NAME -- CMD...`).
    Ssh(logs::SshArgs),
    /// Reconcile a folder continuously: on file changes, on a periodic resync, and when a
    /// VM exits (restarted with backoff). SIGINT/SIGTERM exit 0 and leave the VMs running.
    Watch(watch::WatchArgs),
    /// Serve the web dashboard (instances live, boot timelines, consoles, images, actions,
    /// a JSON API and /metrics) on 127.0.0.1; prints the address to open, token included.
    Ui(ui::UiArgs),
    /// Run the egress proxy in the foreground (started by clawfarm itself when an instance
    /// with network policy allow or open starts; see rfc/012-sandbox.md).
    #[command(hide = true)]
    EgressProxy,
}

/// What every verb gets: the runtime root and the global options.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The runtime root.
    pub home: Home,
    /// `--accel` (wins over `CLAWFARM_ACCEL`).
    pub accel: Option<AccelMode>,
    /// `--log-format`.
    pub log_format: LogFormat,
}

impl Ctx {
    /// The driver for this home (see [`crate::driver::from_env`]).
    pub fn driver(&self) -> anyhow::Result<Arc<dyn Driver>> {
        crate::driver::from_env(&self.home, self.accel)
    }

    /// Create the runtime root if needed.
    pub fn ensure_home(&self) -> anyhow::Result<()> {
        self.home
            .ensure()
            .with_context(|| format!("cannot create {}", self.home.root().display()))
    }
}

/// Entry point of the `clawfarm` binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = if matches!(cli.command, Command::Watch(_) | Command::Ui(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.log_format, level);
    let result = run(cli);
    crate::home::remove_scratch();
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => quit_on_broken_pipe(),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Whether `e` comes from writing into a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The reader of our stdout went away (`| head`): end as `ls | head` does, killed by
/// SIGPIPE, with nothing on stderr. SIGPIPE stays ignored for the rest of the program
/// (Rust's default), so a closed socket is an error, never a death; it is restored only
/// here, at the very end.
fn quit_on_broken_pipe() -> std::process::ExitCode {
    // SAFETY: restoring the default disposition and raising a signal at exit; no handler
    // of ours is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::ExitCode::from(141)
}

fn init_logging(fmt: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAWFARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a terminal: a log file or a journal gets plain text (and NO_COLOR
    // is honoured).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match fmt {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// Run one parsed command; returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let home = Home::resolve(cli.home.as_deref()).context("cannot find the runtime root")?;
    let read_only = match &cli.command {
        Command::Validate(_)
        | Command::Plan(_)
        | Command::Ps(_)
        | Command::Checkpoints(_)
        | Command::Images(_)
        | Command::Events(_)
        | Command::Logs(_)
        | Command::Schema
        | Command::Completions { .. } => true,
        Command::Gc(a) => a.dry_run,
        _ => false,
    };
    let home = if read_only { home.read_only() } else { home };
    let ctx = Ctx {
        home,
        accel: cli.accel,
        log_format: cli.log_format,
    };
    match cli.command {
        Command::Validate(a) => manifests::validate(&ctx, &a),
        Command::Plan(a) => manifests::plan(&ctx, &a),
        Command::Apply(a) => manifests::apply(&ctx, &a),
        Command::Ps(a) => ps::ps(&ctx, &a),
        Command::Stop(a) => lifecycle::stop(&ctx, &a),
        Command::Export(a) => lifecycle::export(&ctx, &a),
        Command::Start(a) => lifecycle::start(&ctx, &a),
        Command::Rm(a) => lifecycle::rm(&ctx, &a),
        Command::Checkpoint(a) => checkpoints::checkpoint(&ctx, &a),
        Command::Checkpoints(a) => checkpoints::checkpoints(&ctx, &a),
        Command::Restore(a) => checkpoints::restore(&ctx, &a),
        Command::Suspend(a) => checkpoints::suspend(&ctx, &a),
        Command::Volume(a) => checkpoints::volume(&ctx, &a),
        Command::New(a) => crate::tui::wizard::run(&a),
        Command::Schema => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&crate::input::manifest::json_schema())?
            )?;
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "clawfarm", &mut script);
            out!("{}", String::from_utf8_lossy(&script))?;
            Ok(0)
        }
        Command::Run(a) => run::run(&ctx, a),
        Command::Import(a) => store::import(&ctx, &a),
        Command::Images(a) => store::images(&ctx, &a),
        Command::Gc(a) => store::gc(&ctx, &a),
        Command::Events(a) => events::events(&ctx, &a),
        Command::Logs(a) => logs::logs(&ctx, &a),
        Command::Ssh(a) => logs::ssh(&ctx, &a),
        Command::Watch(a) => watch::watch(&ctx, a),
        Command::Ui(a) => ui::ui(&ctx, &a),
        Command::EgressProxy => {
            crate::egress::proxy::run(crate::egress::EgressConfig::from_env()?)?;
            Ok(0)
        }
    }
}

/// The async runtime of one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn param_env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Load the desired state of `files` (all errors collected, never the first only).
///
/// With `prompts`, on a terminal ([`crate::tui::prompt::is_interactive`]), params that
/// nothing resolves are asked for; Ctrl-C at a prompt is an error, before anything
/// changes. `validate` and `watch` never prompt.
///
/// `cache` keeps parsed manifests between calls (watch). `read_only` verbs create nothing in
/// the home (not even its param key).
async fn load_desired(
    ctx: &Ctx,
    files: &[PathBuf],
    prompts: bool,
    cache: Option<&crate::input::manifest::Cache>,
    read_only: bool,
) -> anyhow::Result<Desired> {
    let key = if read_only {
        ctx.home.secret_key_read_only()
    } else {
        ctx.home.secret_key()
    }
    .context("cannot read the param digest key")?;
    let tty = crate::tui::prompt::TtyPrompter::new();
    let penv = ParamEnv {
        key: &key,
        env: &param_env_lookup,
        prompter: (prompts && crate::tui::prompt::is_interactive())
            .then_some(&tty as &dyn desired::Prompter),
        command_line: false,
    };
    let d = desired::load(
        &ctx.home,
        files,
        &crate::desired::resolve::StoreResolver,
        &penv,
        cache,
    )
    .await;
    if let Some(at) = tty.interrupted() {
        bail!("interrupted at the prompt for {at}; nothing was changed");
    }
    Ok(d)
}

/// Take the applier lock of `home`, telling the user whom we wait for.
fn apply_lock(home: &Home, timeout: Option<Duration>) -> anyhow::Result<lock::FileLock> {
    let l = lock::lock(
        &home.apply_lock(),
        &format!("the apply lock of {}", home.root().display()),
        timeout,
        |holder| eprintln!("waiting for the apply lock held by {holder} ..."),
    )?;
    Ok(l)
}

/// An event sink that logs to `events.jsonl` and echoes progress to stderr.
fn progress_sink(home: &Home) -> EventSink {
    let t0 = Instant::now();
    EventSink::to_file(home.events_log()).with_echo(move |e: &Event| {
        if e.result == "started" && e.action == "wait-ready" {
            eprintln!(
                "[{:>6.1}s] {} waiting for the guest to become ready",
                t0.elapsed().as_secs_f64(),
                e.instance
            );
        } else if e.result != "started" {
            eprintln!(
                "[{:>6.1}s] {} {} {}{}",
                t0.elapsed().as_secs_f64(),
                e.instance,
                e.action,
                e.result,
                if e.result == "failed" {
                    format!(": {}", e.message)
                } else {
                    String::new()
                }
            );
        }
    })
}

/// Print rows as aligned columns (the first row is the header).
fn print_table<const N: usize>(rows: &[[String; N]]) -> std::io::Result<()> {
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        outln!("{}", line.trim_end())?;
    }
    Ok(())
}

pub use crate::util::text::error_chain;

/// Says which instance lock a verb waits for.
fn say_waiting() -> crate::reconcile::ops::OnWait {
    Arc::new(|clawid: &str, holder: &str| {
        eprintln!("waiting for instance {clawid} (held by {holder}) ...")
    })
}
